"""Tests of course_lib.instructor."""
