"""What a run gives its user, read from the run store. Inside, arrows point down too (pyproject's
contract): rendering text (text.py: tables, verdicts, Markdown, the HTML page) < scoring the parents and the
start (scoreboard.py) and confirming the finalists (confirmation.py) < plots (report.py: `write_report`) <
finishing a run (finish.py: `finish_run`) and the exported model folder and card (export.py: `export_run`);
the Hub upload (hub.py: `push_folder`) and the figures' parts (route_plot.py, lineage.py) at the bottom.
The command layer calls these after the loop; the loop knows none of them. Each is imported from its own
module, so a command loads only what it needs (matplotlib only for plots).
"""
