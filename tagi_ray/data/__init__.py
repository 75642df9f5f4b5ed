"""Data layer: SNI task files, Tk-Instruct prompts, Arrow tables and the embedded suite."""
from tagi_ray.data.prompts import instance_text, instruction_text, parse_prompt_format, tk_prompt
from tagi_ray.data.sni import Instance, LoadResult, SNITask, TaskFileError, load_split, load_task, load_tasks
from tagi_ray.data.tables import read_table, table_to_tasks, tasks_to_table, write_table

__all__ = [
    "Instance", "LoadResult", "SNITask", "TaskFileError", "instance_text", "instruction_text",
    "load_split", "load_task", "load_tasks", "parse_prompt_format", "read_table", "table_to_tasks",
    "tasks_to_table", "tk_prompt", "write_table",
]
