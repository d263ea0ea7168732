"""What a run gives its user, read from the run store: the report table (scoreboard.py:
`finish_run`, `render_markdown`), plots and HTML (report.py: `write_report`), the exported model
folder and card (export.py: `export_run`), and the Hub upload (hub.py: `push_folder`). The
command layer calls these after the loop; the loop knows none of them. Each is imported from its
own module, so a command loads only what it needs (matplotlib only for plots).
"""
