"""Tests of course_lib.qlora."""
