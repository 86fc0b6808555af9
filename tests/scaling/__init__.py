"""Tests of course_lib.scaling."""
