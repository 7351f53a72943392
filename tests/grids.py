"""A tiny Table 1 grid (5 cells on the tiny Llama, a step each) shared by the tests of status and submission."""

TINY_TABLE1 = ["experiment=table1", "profile=mini", "model=tiny-llama", "method.r=4", "task.train_subset=8",
               "task.val_set_size=0", "task.test_subset=2", "training.micro_batch_size=4", "training.batch_size=4",
               "training.max_steps=1", "training.warmup_steps=0", "selection=last",
               "protocol.max_new_tokens=4", "meta.run.progress=false"]
