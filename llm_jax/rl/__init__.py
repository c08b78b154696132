"""Reinforcement learning stages: rollouts (rollout.py) and reasoning RL with verifiable rewards (grpo.py)."""
