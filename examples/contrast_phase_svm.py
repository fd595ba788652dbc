"""Contrast-phase classification from Hounsfield units at detected landmarks (SAM §IV-D): a
scikit-learn pipeline LandmarkIntensityFeatures -> StandardScaler -> SVC on synthetic CTs.

    python examples/contrast_phase_svm.py                        # trains a small model first
    python examples/contrast_phase_svm.py --model demo.samlearn  # reuse e.g. the demo's model

``make_phantoms(contrast_phase="random")`` draws CTs in the non-contrast, arterial or venous phase
(each subject's enhancement varies with bolus strength and timing). One template CT marks landmarks
on contrast-sensitive anatomy (aorta, portal vein, kidneys, liver, spleen...); the detector finds
them in every CT, ``LandmarkIntensityFeatures`` summarises the HU in a 5 mm ball around each, and an
SVM learns the phase. Accuracy and macro-F1 come from stratified cross-validation. For reference,
the same SVM on the HU at the phantoms' true landmarks (known here, never in practice) gives the
accuracy perfect landmarks would allow.
"""
import argparse

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import samlearn
from samlearn import LandmarkIntensityFeatures
from samlearn.datasets import PHASES, make_phantoms

SENSITIVE = ("aortic_arch_top", "heart_apex", "liver_dome", "portal_vein_bifurcation", "spleen_tip",
             "kidney_left_upper_pole", "kidney_right_upper_pole", "aortic_bifurcation")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="trained CT model (default: train one for --minutes)")
    ap.add_argument("--minutes", type=float, default=2.0, help="training time when training (default 2)")
    ap.add_argument("--subjects", type=int, default=24, help="CTs to classify (default 24)")
    ap.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = make_phantoms(args.subjects, contrast_phase="random", field_of_view="full",
                         spacing=(3.0, 3.0, 5.0), random_state=args.seed)
    y = np.asarray(data.phase)
    print("phases:", {p: int(np.sum(y == p)) for p in PHASES})

    if args.model:
        emb = samlearn.load(args.model)
    else:  # self-supervised: the phases are never shown to the embedder
        emb = samlearn.SAMEmbedder(preset="ct-lite", max_time=60 * args.minutes, max_iter=None,
                                   batch_size=2, spacing_mm=4.0, random_state=args.seed, verbose=1)
        emb.fit(data.images)

    # template: a separate phantom with the contrast-sensitive landmarks marked
    tmpl = make_phantoms(1, field_of_view="full", contrast_phase="venous", random_state=args.seed + 999)
    idx = [tmpl.landmark_names.index(n) for n in SENSITIVE]
    det = samlearn.OneShotLandmarkDetector(embedder=emb)
    det.fit(tmpl.images[0], tmpl.landmarks[0][idx])

    clf = make_pipeline(LandmarkIntensityFeatures(detector=det, radius_mm=5.0, stats=("mean", "median"),
                                                  landmark_names=SENSITIVE),
                        StandardScaler(), SVC(C=1.0))
    cv = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    # LandmarkIntensityFeatures treats the fitted detector as frozen: cloning for each fold shares it
    pred = cross_val_predict(clf, data.images, y, cv=cv)
    acc, f1 = accuracy_score(y, pred), f1_score(y, pred, average="macro")
    print(f"{args.folds}-fold cross-validated accuracy {100 * acc:.0f} %, macro F1 {100 * f1:.0f} %")
    print("confusion matrix (rows: true, columns: predicted; order "
          f"{', '.join(PHASES)}):\n{confusion_matrix(y, pred, labels=list(PHASES))}")
    # the upper bound: HU at the true landmarks of every phantom (the same SVM and folds)
    own = [data.landmark_names.index(n) for n in SENSITIVE]
    true_hu = np.stack([im.sample(lm[own]) for im, lm in zip(data.images, data.landmarks)])
    bound = accuracy_score(y, cross_val_predict(make_pipeline(StandardScaler(), SVC(C=1.0)), true_hu, y, cv=cv))
    print(f"with the true landmarks instead (upper bound): accuracy {100 * bound:.0f} %")
    return acc, f1


if __name__ == "__main__":
    main()
