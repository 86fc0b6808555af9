"""Tests of course_lib.fast."""
