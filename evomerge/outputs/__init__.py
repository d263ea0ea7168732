"""What a run gives its user, read from the run store: the report table (scoreboard.py), plots and
HTML (report.py), the exported model folder and card (export.py), and the Hub upload (hub.py).
The command layer calls these after the loop; the loop knows none of them.
"""
