"""effnet-serve: the classifier as an HTTP service (the optional 'serve' extra).

cli.py (the command), app.py (routes and limits), pool.py + worker.py (the interpreter
processes), metrics.py (Prometheus), static/ (the web page). Importing this package
imports nothing: the workers load only runtime and worker.py.
"""
