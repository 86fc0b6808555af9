"""The notebooks themselves: they run, nbgrader grades them as intended, and they are committed clean."""
