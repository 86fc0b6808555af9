"""The runtime every notebook starts from: profiles and devices, the setup cell, the course models, the course task.

runtime (device, dtype, seeds, profile, quiet logs), session (`start`), models (offline-first loading), tasks (the
JSON-extraction task), colab (the badge and Colab setup), checks (what a hidden test reports to the grader).
Imports no other part of course_lib.
"""
