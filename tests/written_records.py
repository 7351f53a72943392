"""Records in the real formats of datasets no copy of which is on this machine (ViGGO, SQL), written by the
tests that need them."""

import json

# GEM/viggo's record format (the fields a record has on the hub)
VIGGO = [
    {"gem_id": "viggo-train-0", "meaning_representation": "inform(name[Dirt: Showdown], release_year[2012], "
     "esrb[E 10+ (for Everyone 10 and Older)], genres[driving/racing, sport], platforms[PlayStation, Xbox, PC], "
     "available_on_steam[yes], has_linux_release[no], has_mac_release[no])",
     "target": "Dirt: Showdown from 2012 is a sport racing game for the PlayStation, Xbox, PC rated E 10+.",
     "references": ["Dirt: Showdown from 2012 is a sport racing game for the PlayStation, Xbox, PC rated E 10+."]},
    {"gem_id": "viggo-train-1", "meaning_representation": "request(genres[simulation])",
     "target": "What is your favourite simulation game?", "references": ["What is your favourite simulation game?"]},
]
# b-mc2/sql-create-context's record format, and RoSA's own data/sql/*.jsonl (chat messages)
SQL_HUB = [{"question": "What is the result when the opponent is blackburn rovers?",
            "context": "CREATE TABLE table_name_39 (result VARCHAR, opponent VARCHAR)",
            "answer": "SELECT result FROM table_name_39 WHERE opponent = 'blackburn rovers'"}]
SQL_ROSA = [{"messages": [
    {"role": "user", "content": "Write a SQL query to answer the question based on the table schema.\n\n context: "
     "CREATE TABLE table_29202276_2 (route_via VARCHAR, train_name VARCHAR)\n\n question: What is the route/via "
     "when the train name is Parasuram Express?"},
    {"role": "assistant", "content": "SELECT route_via FROM table_29202276_2 WHERE train_name = 'Parasuram Express'"}]}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)

# HuggingFaceH4/ultrafeedback_binarized's train_sft records (chosen conversations), and alpaca_eval's JSON list
CHATS = [
    {"prompt": "Name a primary colour.", "prompt_id": "p0",
     "messages": [{"role": "user", "content": "Name a primary colour."},
                  {"role": "assistant", "content": " Red is a primary colour. "}]},
    {"prompt": "Say hello in French.", "prompt_id": "p1",
     "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in French."},
                  {"role": "assistant", "content": "Bonjour."}, {"role": "user", "content": "And in Spanish?"},
                  {"role": "assistant", "content": "Hola."}]},
]
ALPACA_EVAL = [
    {"instruction": "What are the names of some famous actors that started their careers on Broadway?",
     "output": "Some famous actors ...", "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
    {"instruction": "How did US states get their names?", "output": "US states get their names ...",
     "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
]
# google/IFEval's records
IFEVAL = [
    {"key": 1000, "prompt": "Write a 2 paragraph story about a cat. Separate paragraphs with the markdown divider: ***",
     "instruction_id_list": ["length_constraints:number_paragraphs"], "kwargs": [{"num_paragraphs": 2}]},
    {"key": 1001, "prompt": "Answer in all lowercase letters: what is the capital of France?",
     "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
]


def write_json(path, records):
    path.write_text(json.dumps(records))
    return str(path)
# m-a-p/CodeFeedback-Filtered-Instruction's records (query, answer, resource, lang); the third has no code block
CODE_FEEDBACK = [
    {"query": "Write a Python function that returns the sum of a list of integers.",
     "answer": "Here is the function:\n\n```python\ndef total(xs):\n    return sum(xs)\n```\n\nIt uses the built-in "
               "`sum`.\n\n```python\nprint(total([1, 2]))\n```",
     "resource": "evol_instruct", "lang": "python"},
    {"query": "Reverse a string in Python.",
     "answer": "```python\ndef reverse(s):\n    return s[::-1]\n```", "resource": "code_alpaca", "lang": "python"},
    {"query": "What does the GIL stand for?", "answer": "The Global Interpreter Lock.", "resource": "sharegpt",
     "lang": "unknown"},
]
# meta-math/MetaMathQA's records (query, response, type, original_question): a GSM AnsAug record keeps GSM8K's
# "#### N" before MetaMath's "The answer is:"; a MATH one is not a GSM record
METAMATHQA = [
    {"query": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
              "many clips did Natalia sell altogether in April and May?",
     "response": "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
                 "#### 72\nThe answer is: 72", "type": "GSM_AnsAug", "original_question": "Natalia sold clips ..."},
    {"query": "What is the value of $x$ in $2x + 3 = 7$?", "response": "Subtracting 3, $2x = 4$, so $x = 2$.\n"
     "The answer is: 2", "type": "MATH_Rephrased", "original_question": "Solve $2x+3=7$."},
]
