"""Compatibility namespaces for code written against other pruning toolkits."""
