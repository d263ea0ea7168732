"""How a candidate's score comes about: lm-eval tasks built once (tasks.py), one HFLM over the
resident model (scorer.py), continuous metrics of the gold answer derived from lm-eval's own
loglikelihoods (continuous.py), the one place that turns metrics into objectives and a fitness
(fitness.py), and racing's stages and bounds (racing.py). Knows models and tasks, not runs.
"""

from evomerge.scoring.fitness import Metrics, Objective
from evomerge.scoring.racing import Bar, Race
from evomerge.scoring.scorer import LMEvalScorer, load_from_disk
from evomerge.scoring.tasks import TaskSuite

__all__ = ["Bar", "LMEvalScorer", "Metrics", "Objective", "Race", "TaskSuite", "load_from_disk"]
