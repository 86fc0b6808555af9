"""Tests of course_lib.data."""
