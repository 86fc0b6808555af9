"""The instructor's tools: the `course` command, release, grading, the sandbox. No teaching module imports it.

cli, grading (nbgrader driven from Python), batch (a folder of submissions), intake (what an LMS export holds:
student ids, archives, links), sandbox (the kernel launcher: namespaces, a private root, Landlock, limits),
execute (nbgrader's Execute step on the sandboxed kernel, with its budgets), verdict (hidden tests' reports judged
in the grader), feedback (the pages students get), badges. Kernels never see this package.
"""
