"""The foundation every package of the project may import: config loading, box geometry,
detection AP and the explicit process set-up the command-line entry points opt in to.

Nothing here imports ``pipeline``, ``student``, ``teacher``, ``tracker`` or ``demo``, and
importing it changes no process-wide state.
"""
