"""Tests for results.py: which files of a --results_dir a run replaces, and what index.html and metrics.csv say."""
import csv
import html.parser
import os

import pytest

import results
from utils import UserError


def test_publishing_takes_metrics_json_away_first_and_puts_it_back_last(tmp_path, monkeypatch):
    """A folder that holds metrics.json holds one whole run: a kill between the renames leaves no metrics.json, or
    all of the new run's files beside it. A file that only starts like an output (notes) is the user's: kept."""
    folder, staging = tmp_path / 'res', tmp_path / 'res' / '.unfinished'
    staging.mkdir(parents=True)
    for name in ('Generated-a.png', 'Grid-a.png', 'index.html', 'metrics.json', 'Generated-notes.txt'):
        (folder / name).write_text('old')
    for name in ('Generated-b.png', 'Grid-b.png', 'index.html', 'metrics.json'):
        (staging / name).write_text('new')
    moves, remove, replace = [], os.remove, os.replace
    monkeypatch.setattr(os, 'remove', lambda path: moves.append(('removed', os.path.basename(path))) or remove(path))
    monkeypatch.setattr(os, 'replace', lambda old, new: moves.append(('placed', os.path.basename(new)))
                        or replace(old, new))
    results.publish_results(str(folder), str(staging), [])
    assert moves[0] == ('removed', 'metrics.json') and moves[-1] == ('placed', 'metrics.json'), moves
    assert sorted(os.listdir(folder)) == ['Generated-b.png', 'Generated-notes.txt', 'Grid-b.png', 'index.html',
                                          'metrics.json']
    assert (folder / 'index.html').read_text() == 'new'


def test_a_folder_is_test_pys_by_its_mark_or_a_metrics_json_of_its_own(tmp_path):
    assert not results.written_by_test_py(str(tmp_path))
    (tmp_path / 'metrics.json').write_text('{"accuracy": 0.9}')  # another tool's report
    assert not results.written_by_test_py(str(tmp_path))
    (tmp_path / 'metrics.json').write_text('{"run": "r", "mode": "full", "images": []}')  # test.py's, before the mark
    assert results.written_by_test_py(str(tmp_path))
    os.remove(tmp_path / 'metrics.json')
    (tmp_path / results.RESULTS_MARK).write_text('')
    assert results.written_by_test_py(str(tmp_path))


def test_an_output_that_would_replace_an_input_is_found_through_a_symlinked_folder(tmp_path):
    (tmp_path / 'res').mkdir()
    inputs = [(name, str(tmp_path / 'res' / f'{name}.png'), None, None, None) for name in ('a', 'MaskResized-a')]
    os.symlink(tmp_path / 'res', tmp_path / 'link')
    with pytest.raises(UserError, match=r'MaskResized-a\.png: the output MaskResized-a\.png of \S+a\.png would '
                                        r'overwrite this input'):
        results.check_outputs_spare_inputs(str(tmp_path / 'link'), 'full', inputs)


def test_a_geotiff_is_generated_from_a_tiff_whatever_its_suffix_case():
    assert results.output_names('sliding', 'geo', 'in/GEO.TIF', False)['generated'] == 'Generated-geo.tif'
    assert results.output_names('full', 'geo', 'in/GEO.TIF', False)['generated'] == 'Generated-geo.png'


def test_means_skip_missing_values():
    rows = [{'metrics': {'PSNR': None, 'seam_score': 1.0, 'FID': None}},
            {'metrics': {'PSNR': 20.0, 'seam_score': None, 'FID': None}}]
    assert results.mean_scores(rows) == {'PSNR': 20.0, 'seam_score': 1.0}  # no FID: none was computed


# ---------------------------------------------------------------- index.html and metrics.csv

def report_rows():
    """Two inputs with names that need escaping in HTML and quoting in links; the first generated a GeoTIFF (not
    shown by browsers) and has no real image, the second lacks a score the first has."""
    first = {'name': 'a&b <i>', 'size': [30, 50], 'metrics': {'PSNR': 18.123456, 'L1': 0.123456, 'seam_score': None},
             'files': {'mask': 'MaskResized-a&b <i>.png', 'generated': 'Generated-a&b <i>.tif',
                       'grid': 'Grid-a&b <i>.png'}}
    second = {'name': 'c#d 100%', 'size': [64, 64], 'metrics': {'PSNR': 20.0, 'L1': 0.25},
              'files': {'mask': 'MaskResized-c#d 100%.png', 'generated': 'Generated-c#d 100%.png',
                        'grid': 'Grid-c#d 100%.png', 'real': 'OriginalResized-c#d 100%.png'}}
    return [first, second]


def test_metrics_csv_has_one_row_per_input_at_4_significant_digits_and_the_means(tmp_path):
    rows = report_rows()
    results.write_metrics_csv(tmp_path / 'metrics.csv', rows, results.mean_scores(rows))
    with open(tmp_path / 'metrics.csv', newline='') as f:
        assert list(csv.reader(f)) == [['name', 'height', 'width', 'L1', 'PSNR', 'seam_score'],
                                       ['a&b <i>', '30', '50', '0.1235', '18.12', ''],
                                       ['c#d 100%', '64', '64', '0.25', '20', ''],
                                       ['mean', '', '', '0.1867', '19.06', '']]


class Table(html.parser.HTMLParser):
    """The page's <p> text and its table: per row, per cell, the text and the links and images in it."""
    def __init__(self):
        super().__init__()
        self.paragraph, self.rows, self.where = '', [], None

    def handle_starttag(self, tag, attrs):
        if tag == 'p':
            self.where = 'p'
        elif tag == 'tr':
            self.rows.append([])
        elif tag in ('td', 'th'):
            self.rows[-1].append({'text': '', 'tags': []})
            self.where = 'cell'
        elif tag in ('a', 'img') and self.where == 'cell':
            self.rows[-1][-1]['tags'].append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self.where = None if tag in ('p', 'td', 'th') else self.where

    def handle_data(self, data):
        if self.where == 'p':
            self.paragraph += data
        elif self.where == 'cell':
            self.rows[-1][-1]['text'] += data


def test_index_html_escapes_names_quotes_links_and_links_a_geotiff_without_showing_it(tmp_path):
    rows = report_rows()
    results.write_index_html(tmp_path / 'index.html', 'run <x>', rows, results.mean_scores(rows))
    text = (tmp_path / 'index.html').read_text()
    assert '<title>run &lt;x&gt;</title>' in text and '<h1>run &lt;x&gt;</h1>' in text
    page = Table()
    page.feed(text)
    assert page.paragraph == 'L1 0.1867, PSNR 19.06'
    header, first, second = page.rows
    assert [cell['text'] for cell in header] == ['name', 'mask', 'generated', 'real', 'grid', 'metrics']
    assert first[0]['text'] == 'a&b <i>' and second[0]['text'] == 'c#d 100%'
    assert first[2]['tags'] == [('a', {'href': 'Generated-a%26b%20%3Ci%3E.tif'})]  # a link only: no <img> of a TIFF
    assert first[3] == {'text': '—', 'tags': []}  # no real image
    assert first[5]['text'] == 'PSNR: 18.12L1: 0.1235'  # <br> between them; its seam score, not computed, left out
    link = 'OriginalResized-c%23d%20100%25.png'
    assert second[3]['tags'] == [('a', {'href': link}), ('img', {'src': link, 'alt': 'OriginalResized-c#d 100%.png'})]
