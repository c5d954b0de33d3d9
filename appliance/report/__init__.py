"""The printed report: findings in plain words, as a PDF made on the box."""
