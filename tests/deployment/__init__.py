"""Tests of course_lib.deployment."""
