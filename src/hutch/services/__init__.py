"""The control plane's logic: what an API call means, over the store and the scheduler.

Routes (hutch.api) translate HTTP to calls here and back; this layer decides: who may do what,
what a quota allows, where a machine goes, which transitions are legal, what each one records.
"""
