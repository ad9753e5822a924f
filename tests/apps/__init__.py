"""Small applications the tests (and bench/backplane.py) serve in their own processes."""
