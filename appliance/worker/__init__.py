"""The worker role: turns an accepted image into findings (decode, route, check, infer, explain).

`role.serve` runs the job loop; `analyse.analyse` is the pipeline for one image and touches no
store, so it can be tested and benchmarked alone; `models.ModelSet` loads the packages once.
"""
