"""Options: the one table of defaults, label budgets, and the range checks the commands share."""
