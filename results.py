"""test.py's results folder: the output file names, the checks that nothing else there is replaced, outputs made
in a staging folder that replace the previous run's results at once, and the index.html and metrics.csv reports.
"""
import contextlib
import csv
import html
import io
import json
import os
import shutil
import urllib.parse

import numpy as np

from image_io import TIFF_SUFFIXES, grid_image, save_geotiff, save_png
from utils import (UserError, counted, free_space, raise_noted_stop, remove_stale_temp_files, stop_signals_noted,
                   write_text_atomic)

REPORTS = ('index.html', 'metrics.csv', 'metrics.json')
OUTPUT_PREFIXES = ('Generated-', 'MaskResized-', 'Grid-', 'OriginalResized-')  # output_names' prefixes
RESULTS_MARK = '.test_py_results'  # in a --results_dir: its reports and images are test.py's to replace
STAGING = '.unfinished'  # a run's outputs are made here and moved into --results_dir when all are done
MAX_NAME_BYTES = 255 - len('.OriginalResized-.png.12345678.tmp')  # the longest output's temp file name


def replaceable_outputs(path, inputs):
    """The files in path of test.py's output names, but for this run's inputs (earlier MaskResized- files fed back
    as --masks): what a run replaces there."""
    keep = {os.path.realpath(source) for _, source, *_ in inputs}
    return sorted(name for name in os.listdir(path)
                  if (name in REPORTS or (name.startswith(OUTPUT_PREFIXES) and name.endswith(('.png', '.tif'))))
                  and os.path.realpath(os.path.join(path, name)) not in keep)


def written_by_test_py(path):
    """Whether test.py wrote the reports and images in the folder: its mark, or (folders from before the mark)
    a metrics.json of its own."""
    if os.path.exists(os.path.join(path, RESULTS_MARK)):
        return True
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(path, 'metrics.json')) as f:
            report = json.load(f)
        return isinstance(report, dict) and {'run', 'mode', 'images'} <= report.keys()
    return False


def check_results_dir_is_ours(path, inputs):
    """Refuse, before anything is written, a folder holding files of test.py's names without test.py's mark: a
    website's index.html, someone's Grid-map.png would be replaced. (This run's inputs are never replaced.)"""
    if not os.path.isdir(path) or written_by_test_py(path):
        return
    unmarked = replaceable_outputs(path, inputs)
    if unmarked:
        raise UserError(f'{path}: holds {counted(len(unmarked), "file")} of test.py\'s output names (e.g. '
                        f'{unmarked[0]}) but not its mark; test.py would replace them: choose an empty or new '
                        f'--results_dir (if they are from an interrupted older test.py, delete them)')


def start_staging(path):
    """Mark the (locked) results folder as test.py's and give this run an empty staging folder inside it; one left
    by an interrupted run is removed."""
    write_text_atomic(os.path.join(path, RESULTS_MARK), 'reports and images here are replaced by each test.py run\n')
    remove_stale_temp_files(path)
    staging = os.path.join(path, STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def publish_results(path, staging, inputs):
    """Replace the previous run's reports and images with this run's, all at once at the end: an interrupted run
    leaves the earlier results whole, and a run on other masks leaves no old image beside the new ones.
    Renames only, so a Ctrl-C or SIGTERM waits for them (raised in the middle, it left half of each run there).
    A kill -9 within them (milliseconds) can leave a mix: metrics.json goes first and comes back last, so a folder
    holding it holds one whole run, and the next run puts it right."""
    old = replaceable_outputs(path, inputs)
    with stop_signals_noted() as asked:
        for name in sorted(old, key=lambda name: name != 'metrics.json'):
            os.remove(os.path.join(path, name))
        for name in sorted(os.listdir(staging), key=lambda name: name == 'metrics.json'):
            os.replace(os.path.join(staging, name), os.path.join(path, name))
        os.rmdir(staging)
    raise_noted_stop(asked)
    replaced = sum(name.startswith('Generated-') for name in old)
    if replaced:
        print(f'note: {path}: replaced {counted(replaced, "result")} of an earlier run there '
              '(--results_dir keeps them apart)')


def output_names(mode, name, source, with_real):
    """{kind: file name} of one input's images; a GeoTIFF is generated from a TIFF in the modes whose output is on
    the input's pixel grid (sliding, tiles)."""
    geotiff = mode in ('sliding', 'tiles') and source.lower().endswith(TIFF_SUFFIXES)
    files = {'generated': f'Generated-{name}.{"tif" if geotiff else "png"}', 'mask': f'MaskResized-{name}.png',
             'grid': f'Grid-{name}.png'}
    if with_real:
        files['real'] = f'OriginalResized-{name}.png'
    return files


def check_outputs_spare_inputs(results_dir, mode, inputs):
    """Refuse before writing when one input's outputs would overwrite another input: a.png fed in beside
    MaskResized-a.png from an earlier run into the same folder would replace that mask, read or not yet read."""
    sources = {os.path.realpath(source): source for _, source, *_ in inputs}
    for name, source, _, real, _ in inputs:
        for file in output_names(mode, name, source, real is not None).values():
            clash = sources.get(os.path.realpath(os.path.join(results_dir, file)))
            if clash:
                raise UserError(f'{clash}: the output {file} of {source} would overwrite this input; '
                                f'choose another --results_dir')


def save_outputs(folder, mode, name, source, generated, mask_out, real):
    """Write one input's images into folder; {kind: file name}. A failed write (a full disk) is one clear error."""
    files = output_names(mode, name, source, real is not None)
    try:
        if files['generated'].endswith('.tif'):
            save_geotiff(os.path.join(folder, files['generated']), generated, source)
        else:
            save_png(os.path.join(folder, files['generated']), generated)
        save_png(os.path.join(folder, files['mask']), mask_out)
        if real is not None:
            save_png(os.path.join(folder, files['real']), real)
        panels = [mask_out, generated] + ([real] if real is not None else [])
        save_png(os.path.join(folder, files['grid']), grid_image(panels))
    except OSError as err:
        raise UserError(f'{folder}: cannot write the outputs of {source} ({err.strerror or err}; '
                        f'{free_space(folder)})') from None
    return files


# ---------------------------------------------------------------- reports

def format_score(value):
    """A score as written in the reports: 4 significant digits; an empty cell for a score not computed."""
    return '' if value is None else f'{value:.4g}' if isinstance(value, float) else str(value)


def write_index_html(path, title, rows, mean):
    """One table row per input: mask | generated | real | metrics; images by relative links."""
    def img(name):
        if name is None:
            return '<td>—</td>'
        link = urllib.parse.quote(name)
        if name.lower().endswith(TIFF_SUFFIXES):  # browsers do not show TIFF: link it, show the grid instead
            return f'<td><a href="{link}">{html.escape(name)}</a></td>'
        return f'<td><a href="{link}"><img src="{link}" alt="{html.escape(name)}"></a></td>'
    lines = ['<!DOCTYPE html>', '<html><head><meta charset="utf-8">', f'<title>{html.escape(title)}</title>',
             '<style>body{font-family:sans-serif} td,th{border:1px solid #ccc;padding:4px;vertical-align:top}'
             ' img{height:256px;image-rendering:pixelated} table{border-collapse:collapse}</style></head><body>',
             f'<h1>{html.escape(title)}</h1>',
             '<p>' + html.escape(', '.join(f'{k} {format_score(v)}' for k, v in mean.items())) + '</p>',
             '<table><tr><th>name</th><th>mask</th><th>generated</th><th>real</th><th>grid</th><th>metrics</th></tr>']
    for row in rows:
        files = row['files']
        metrics = '<br>'.join(html.escape(f'{k}: {format_score(v)}') for k, v in row['metrics'].items()
                              if v is not None)  # not computed (a seam score of a mask under one window): not shown
        lines.append(f'<tr><td>{html.escape(row["name"])}</td>{img(files["mask"])}{img(files["generated"])}'
                     f'{img(files.get("real"))}{img(files["grid"])}<td>{metrics}</td></tr>')
    lines.append('</table></body></html>\n')
    write_text_atomic(path, '\n'.join(lines))


def write_metrics_csv(path, rows, mean):
    keys = sorted({k for row in rows for k in row['metrics']})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['name', 'height', 'width'] + keys)
    for row in rows:
        writer.writerow([row['name'], *row['size']] + [format_score(row['metrics'].get(k)) for k in keys])
    writer.writerow(['mean', '', ''] + [format_score(mean.get(k)) for k in keys])
    write_text_atomic(path, buffer.getvalue())


def mean_scores(rows):
    """Each score's mean over the rows that have it."""
    keys = sorted({k for row in rows for k in row['metrics']})
    values = {k: [row['metrics'][k] for row in rows if row['metrics'].get(k) is not None] for k in keys}
    return {k: float(np.mean(v)) for k, v in values.items() if v}
