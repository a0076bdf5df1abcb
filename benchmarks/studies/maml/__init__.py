"""Study package: maml."""
