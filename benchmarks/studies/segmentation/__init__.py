"""Study package: segmentation."""
