"""What a user calls: the HTTP client, the ``byol`` command line, and the workflows behind its commands.

client      the HTTP client (imports nothing of ours)      cli        the command table (``byol --help`` is instant)
commands/   one module per subcommand: parse → one workflow call with a typed config → print (``tables``)
workflows/  the compositions of training, serving and index calls (evaluation, indexing, export, retrain, demo)
local_server  start/stop a real ``bentoml serve`` as a child process (tests, benchmarks, notebooks)
"""
