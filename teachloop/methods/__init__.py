"""Tuna, RRHF, RAFT and DPO over the student and the teacher: candidates -> teacher ranking -> units -> a loss.

candidates.py samples N answers per instruction; ranking.py has the teacher rank them (probabilistic or
contextual); units.py turns ranked items into each method's training units; trainers.py builds the loss functions
that `teachloop.student.train.train` runs; losses.py holds the pure objectives.
"""
