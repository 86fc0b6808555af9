"""The instructor's tools: the `course` command, release, grading, the sandbox. No teaching module imports it.

cli, grading (nbgrader driven from Python), batch (a folder of submissions), sandbox (the kernel launcher: limits,
Landlock), execute (nbgrader's Execute step on the sandboxed kernel), badges.
"""
