// Cross-check of Bastion's ledger formats against the Go reference, golang.org/x/mod/sumdb
// (note + tlog, which C2SP tlog-tiles and signed-note come from). Run via run.sh.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type dirReader struct{ dir string }

func c2spPath(t tlog.Tile) string {
	p := t.Path() // tile/8/L/NNN[.p/W] or tile/8/data/NNN
	p = strings.TrimPrefix(p, "tile/8/")
	p = strings.Replace(p, "data/", "entries/", 1)
	return "tile/" + p
}

func (r dirReader) Height() int { return 8 }
func (r dirReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, err := os.ReadFile(filepath.Join(r.dir, "log", c2spPath(t)))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}
func (r dirReader) SaveTiles([]tlog.Tile, [][]byte) {}

type spec struct {
	Vkey, Skey, SignText, SignedNote string
	OldSize                          int64
	OldRoot                          string
	Consistency                      []string
	Inclusion                        map[string][]string
}

func must(err error) {
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func b64s(xs []string) []tlog.Hash {
	var out []tlog.Hash
	for _, x := range xs {
		b, err := base64.StdEncoding.DecodeString(x)
		must(err)
		var h tlog.Hash
		copy(h[:], b)
		out = append(out, h)
	}
	return out
}

func main() {
	dir := os.Args[1]
	raw, err := os.ReadFile(os.Args[2])
	must(err)
	var s spec
	must(json.Unmarshal(raw, &s))

	// signed note: Go verifies our checkpoint (its witness cosignature is an unknown key to Go)
	v, err := note.NewVerifier(s.Vkey)
	must(err)
	msg, err := os.ReadFile(filepath.Join(dir, "log", "checkpoint"))
	must(err)
	n, err := note.Open(msg, note.VerifierList(v))
	must(err)
	fmt.Printf("note: %d verified sig(s), %d unverified\n", len(n.Sigs), len(n.UnverifiedSigs))
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	must(err)
	rb, err := base64.StdEncoding.DecodeString(lines[2])
	must(err)
	var root tlog.Hash
	copy(root[:], rb)

	// Go signing with our skey reproduces our note byte for byte
	signer, err := note.NewSigner(s.Skey)
	must(err)
	goNote, err := note.Sign(&note.Note{Text: s.SignText}, signer)
	must(err)
	if string(goNote) != s.SignedNote {
		must(fmt.Errorf("Go-signed note differs from Python-signed note"))
	}

	// tiles: Go's TileHashReader authenticates every tile it reads against the tree hash
	thr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, dirReader{dir})
	th, err := tlog.TreeHash(size, thr)
	must(err)
	if th != root {
		must(fmt.Errorf("tree hash mismatch"))
	}
	for k, proof := range s.Inclusion {
		idx, _ := strconv.ParseInt(k, 10, 64)
		p, err := tlog.ProveRecord(size, idx, thr)
		must(err)
		mine := b64s(proof)
		if len(p) != len(mine) {
			must(fmt.Errorf("inclusion proof length differs at %d", idx))
		}
		for i := range p {
			if p[i] != mine[i] {
				must(fmt.Errorf("inclusion proof differs at %d", idx))
			}
		}
		// entry bundle -> record hash -> CheckRecord
		hs, err := thr.ReadHashes([]int64{tlog.StoredHashIndex(0, idx)})
		must(err)
		bundle, err := os.ReadFile(filepath.Join(dir, "log", c2spPath(tlog.Tile{H: 8, L: -1, N: idx / 256, W: int(min64(256, size-idx/256*256))})))
		must(err)
		entry := nth(bundle, int(idx%256))
		if tlog.RecordHash(entry) != hs[0] {
			must(fmt.Errorf("entry %d does not hash to tile", idx))
		}
		must(tlog.CheckRecord(mine, size, root, idx, tlog.RecordHash(entry)))
	}
	ob, _ := base64.StdEncoding.DecodeString(s.OldRoot)
	var old tlog.Hash
	copy(old[:], ob)
	p, err := tlog.ProveTree(size, s.OldSize, thr)
	must(err)
	mine := b64s(s.Consistency)
	for i := range p {
		if len(p) != len(mine) || p[i] != mine[i] {
			must(fmt.Errorf("consistency proof differs"))
		}
	}
	must(tlog.CheckTree(mine, size, root, s.OldSize, old))
	fmt.Printf("OK: size %d, %d inclusion proofs and entries, consistency %d->%d, skey signing identical\n", size, len(s.Inclusion), s.OldSize, size)
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

func nth(bundle []byte, i int) []byte {
	for {
		l := int(bundle[0])<<8 | int(bundle[1])
		if i == 0 {
			return bundle[2 : 2+l]
		}
		bundle = bundle[2+l:]
		i--
	}
}

