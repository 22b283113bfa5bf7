"""One object per workflow, shared by the command line and the docks.

Between ``widgets/`` + ``cli/`` and ``tasks/``: a workflow's settings are an evented
dataclass that both doors build; ``problems()`` says in sentences what stops a run (the dock
shows the first and disables Run; the CLI exits 2 with it), and ``run(...)`` does the work
through the shared Predictor cache. So a result is the same whichever door the user came
through, and a setting is checked in one place.
"""
