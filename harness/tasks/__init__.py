"""Tasks: where training examples and test sets come from. One module per task."""
