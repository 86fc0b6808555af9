"""Tests of course_lib.evaluation."""
