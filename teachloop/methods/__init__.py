"""The training methods, one module each (as TRL keeps one trainer per method): sft, tuna, rrhf, raft, dpo, citing,
and the RLHF row's two: reward (the reward model) and rlhf (online policy optimisation against it).

Each module holds its params dataclass (`Config`), `build_units(rows, cfg, ...) -> (units, counts)` (counts say
what was left out and why), its pure objective on log-prob tensors, and `make_loss(tokenizer, cfg, max_len)` for
`teachloop.student.train.train`; dpo also has `before` (reference log-probs); rlhf has its own online loop
(`train_policy`: it samples from the policy it trains). common.py holds what they share;
candidates.py samples N answers per instruction and ranking.py has the teacher rank them.
"""
