"""The one training loop (FixMatch + DebiasPL with an EMA teacher), its optimizers, students and run folders."""
