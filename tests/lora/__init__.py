"""Tests of course_lib.lora."""
