"""The book's running tasks, written once: the helpers more than one chapter needs.

A chapter introduces a helper where the story first needs it; from the second chapter on, the helper lives here
and the chapter imports it. Each docstring names the chapter that introduces the helper (the d2l habit: library
and chapter stay traceable both ways).

* :mod:`minipeft.tasks.intents` — the 12-intent classification task (chapters 1–8): the data split, the
  classifier's logits and loss, accuracy per test set, the linear probe on cached features.
* :mod:`minipeft.tasks.harness` — apply a method → train → evaluate → undo, on one shared frozen encoder
  (chapters 2, 3, 5, 6).
* :mod:`minipeft.tasks.language` — the language-model checks of chapters 0, 3, 4 and 10: the loss on a paragraph of
  ordinary English, the persona and fact counts of generated answers.
* :mod:`minipeft.tasks.timing` — forward-pass latency in turns, through the bench's timer (chapters 3 and 5).
* :mod:`minipeft.tasks.vqa` — easy-VQA as a scoring task (chapter 10 and the multimodal chapters): balanced
  questions, one-pass candidate scoring, the blind prior, accuracy per question kind.
* :mod:`minipeft.tasks.vlm` — the Part III vision-language tasks (chapters 11, 12): examples from the generated
  scenes, the collate that masks everything but the answer, the answer-only loss, generated answers scored by kind,
  the text-only prior and the shuffled-image control.
* :mod:`minipeft.tasks.video` — chapter 13's clip questions: prompts with video and sound placeholders, the batch,
  the answer-only loss and generated answers of Video-LLaMA.
"""

# The submodules are imported where they are used (``from minipeft.tasks.intents import ...``), not here: the intent
# task should not pay for importing the VQA task's multimodal code, nor the bench.
