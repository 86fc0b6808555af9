"""The course's tests, one folder per course_lib subpackage (tests/data tests course_lib.data, and so on).

tests/notebooks checks the notebooks themselves (they run, grade, and are released and committed cleanly), and the
files at this level check the repository as a whole. Shared fixtures live in conftest.py, shared helpers in helpers.py.
Every folder is a package, so two folders may each hold a test_plots.py.
"""
