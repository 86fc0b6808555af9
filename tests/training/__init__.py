"""Tests of course_lib.training."""
