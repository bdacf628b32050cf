"""Tasks: what turns a region of the input into a region of the output."""
