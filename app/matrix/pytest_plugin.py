"""pytest plugin (entry point ``pytest11``): placeholder while the matrix is written."""
