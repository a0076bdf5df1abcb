"""Study package: transfer."""
