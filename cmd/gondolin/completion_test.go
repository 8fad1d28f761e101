package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
)

// completed is what gondolin __complete answered: the values offered,
// their descriptions, and cobra's directive to the shell.
type completed struct {
	values    []string
	descs     map[string]string
	directive int
	raw       string
}

// Cobra's directives (cobra.ShellCompDirective).
const (
	dirNoSpace       = 2
	dirNoFileComp    = 4
	dirFilterFileExt = 8
	dirFilterDirs    = 16

	// dirFiles, in TestCompletion's table, wants directive 0: the
	// shell's own file completion (0 there means dirNoFileComp).
	dirFiles = -1
)

// quickly bounds a completion: the shell waits on it at every Tab. Each
// source gives up after 2 s; the rest is slack for a machine twice as
// slow as usual, still far below the 40 s a dial that waited on a hung
// supervisor would take.
const quickly = 30 * time.Second

// complete runs gondolin __complete ARGS... as a shell's completion
// script does.
func complete(t *testing.T, home layout.Home, args ...string) completed {
	t.Helper()
	r := gondolinWithin(t, 20*time.Second, home, "", append([]string{"__complete"}, args...)...)
	if r.code != 0 {
		t.Fatalf("__complete %q: %+v", args, r)
	}
	if r.elapsed > quickly {
		t.Errorf("__complete %q took %v: a shell waits on it", args, r.elapsed)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	last := lines[len(lines)-1]
	d, err := strconv.Atoi(strings.TrimPrefix(last, ":"))
	if !strings.HasPrefix(last, ":") || err != nil {
		t.Fatalf("__complete %q: no directive in %q", args, r.stdout)
	}
	c := completed{descs: map[string]string{}, directive: d, raw: r.stdout}
	for _, l := range lines[:len(lines)-1] {
		v, desc, _ := strings.Cut(l, "\t")
		c.values = append(c.values, v)
		c.descs[v] = desc
	}
	return c
}

// supervisorRuns reports whether home has a supervisor, asking in a way
// that starts none (TestQuietAnswers: status exits 3 when none runs).
func supervisorRuns(t *testing.T, home layout.Home) bool {
	t.Helper()
	return gondolin(t, home, "", "supervisor", "status").code != 3
}

// TestCompletionWithoutSupervisor: with no supervisor running, session
// completion offers nothing, at once, and starts none (a Tab press must
// not boot anything); nor does any completion make a home.
func TestCompletionWithoutSupervisor(t *testing.T) {
	dir, err := os.MkdirTemp("", "gdc") // short: a supervisor socket path would fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.StopSupervisor(layout.Home(dir)); os.RemoveAll(dir) })
	home := layout.Home(dir)

	tests := []struct {
		args      []string
		want      []string
		directive int
	}{
		{args: []string{"attach", ""}, directive: dirNoFileComp},
		{args: []string{"stop", ""}, directive: dirNoFileComp},
		{args: []string{"rm", ""}, directive: dirNoFileComp},
		{args: []string{"logs", ""}, directive: dirNoFileComp},
		{args: []string{"events", ""}, directive: dirNoFileComp},
		{args: []string{"inspect", ""}, directive: dirNoFileComp},
		{args: []string{"policy", "show", ""}, directive: dirNoFileComp},
		{args: []string{"policy", "secret", "set", ""}, directive: dirNoFileComp},
		{args: []string{"ingress", ""}, directive: dirNoFileComp},
		{args: []string{"exec", "--session", ""}, directive: dirNoFileComp},
		{args: []string{"exec", "--session="}, directive: dirNoFileComp},
		{args: []string{"snapshot", ""}, want: []string{"inspect", "ls", "rm"}, directive: dirNoFileComp},
		{args: []string{"ingress", "x", ""}, want: []string{"add", "rm", "ls"}, directive: dirNoFileComp},
		{args: []string{"ingress", "x", "rm", ""}, directive: dirNoFileComp},
		// No snapshot in the store: a snapshot's disk file.
		{args: []string{"snapshot", "inspect", ""}, want: []string{"qcow2"}, directive: dirFilterFileExt},
		{args: []string{"bash", "--resume", ""}, want: []string{"qcow2"}, directive: dirFilterFileExt},
		{args: []string{"exec", "--image", ""}, directive: dirNoFileComp},
		{args: []string{"image", "import", ""}, directive: dirFilterDirs},
		// No session to offer: a host file.
		{args: []string{"cp", ""}, directive: 0},
		{args: []string{"cp", "./a", ""}, directive: 0},
		{args: []string{"cp", "dev:"}, directive: dirNoFileComp},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got := complete(t, home, tt.args...)
			if !slices.Equal(got.values, tt.want) || got.directive != tt.directive {
				t.Errorf("got %q directive %d, want %q directive %d", got.values, got.directive, tt.want, tt.directive)
			}
		})
	}
	if supervisorRuns(t, home) {
		t.Error("a completion started the supervisor")
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("completions made files in an unused home: %v", entries)
	}
}

// TestCompletionHungSupervisor: a supervisor that accepts and never
// answers costs a Tab press the completion's timeout, not a hang.
func TestCompletionHungSupervisor(t *testing.T) {
	dir, err := os.MkdirTemp("", "gdc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	home := layout.Home(dir)
	ln, err := net.Listen("unix", home.SupervisorSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn // held open, unread, until the test ends
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	for _, args := range [][]string{{"attach", ""}, {"exec", "--session", ""}} {
		if got := complete(t, home, args...); len(got.values) != 0 || got.directive != dirNoFileComp {
			t.Errorf("%q: got %q directive %d", args, got.values, got.directive)
		}
	}
}

// completeInBash runs the script gondolin completion bash prints in a
// real bash, as if Tab were pressed after line, and returns what bash
// would offer. The script wants bash-completion's word splitter; a
// stand-in does here (the words are given whole).
func completeInBash(t *testing.T, home layout.Home, words ...string) []string {
	t.Helper()
	script := `
_get_comp_words_by_ref() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
source <(gondolin completion bash) || exit 1
complete -p gondolin >/dev/null || exit 1
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
__start_gondolin gondolin "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"
`
	cmd := exec.Command("bash", append([]string{"-c", script, "bash", "gondolin"}, words...)...)
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home),
		"PATH="+filepath.Dir(gondolinBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash completion of %q: %v", words, err)
	}
	return strings.Fields(string(out))
}

// TestCompletionScripts: the scripts gondolin completion prints are
// ones the shells accept.
func TestCompletionScripts(t *testing.T) {
	home := layout.Home(t.TempDir())
	shells := []struct {
		shell string
		check []string // the shell's own syntax check of a file
	}{
		{"bash", []string{"bash", "-n"}},
		{"zsh", []string{"zsh", "-n"}},
		{"fish", []string{"fish", "--no-execute"}},
	}
	for _, sh := range shells {
		t.Run(sh.shell, func(t *testing.T) {
			r := gondolin(t, home, "", "completion", sh.shell)
			if r.code != 0 || !strings.Contains(r.stdout, "__complete") {
				t.Fatalf("completion %s: %+v", sh.shell, r)
			}
			if _, err := exec.LookPath(sh.check[0]); err != nil {
				t.Skipf("%s is not installed", sh.check[0])
			}
			file := filepath.Join(t.TempDir(), "gondolin."+sh.shell)
			if err := os.WriteFile(file, []byte(r.stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(sh.check[0], append(sh.check[1:], file)...).CombinedOutput(); err != nil {
				t.Fatalf("%s rejects the script: %v\n%s", sh.shell, err, out)
			}
		})
	}
	t.Run("bash completes a subcommand", func(t *testing.T) {
		if got := completeInBash(t, home, "snapshot", "ls"); !slices.Equal(got, []string{"ls"}) {
			t.Errorf("snapshot ls<Tab>: %q", got)
		}
	})
}

// TestCompletion completes sessions, snapshots and images of a home
// with a running session, through the real binary, then with its
// supervisor stopped.
func TestCompletion(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	// The label is free text: its escape must not reach the terminal
	// from a completion's description.
	mustRun(t, home, "bash", "--detach", "--name", "comp", "--label", "lab\x1b]0;pwned\x07")
	id := listSessions(t, home)["comp"].ID
	snapID := mustRun(t, home, "snapshot", "comp", "--name", "compsnap")
	if id == "" || snapID == "" {
		t.Fatalf("session %q, snapshot %q", id, snapID)
	}

	session := []string{"comp", id}
	snapshot := []string{"compsnap", snapID}
	tests := []struct {
		args      []string
		want      []string // all offered, in this order (name first)
		not       []string // none offered
		directive int
	}{
		{args: []string{"attach", ""}, want: session},
		{args: []string{"attach", "co"}, want: []string{"comp"}, not: []string{id}},
		{args: []string{"attach", id[:4]}, want: []string{id}, not: []string{"comp"}},
		{args: []string{"attach", "comp", ""}, not: session},
		{args: []string{"stop", ""}, want: session},
		{args: []string{"rm", ""}, want: session},
		{args: []string{"rm", "comp", ""}, not: session},
		{args: []string{"rm", id, ""}, not: session},
		{args: []string{"logs", ""}, want: session},
		{args: []string{"events", ""}, want: session},
		{args: []string{"inspect", ""}, want: session},
		{args: []string{"policy", "show", ""}, want: session},
		{args: []string{"policy", "allow", ""}, want: session},
		{args: []string{"policy", "allow", "comp", ""}, not: session},
		{args: []string{"policy", "deny", ""}, want: session},
		{args: []string{"policy", "secret", "set", ""}, want: session},
		{args: []string{"policy", "secret", "rm", ""}, want: session},
		{args: []string{"snapshot", ""}, want: append([]string{"inspect", "ls", "rm"}, session...)},
		{args: []string{"snapshot", "--live", ""}, want: session, not: []string{"ls"}},
		{args: []string{"ingress", ""}, want: session},
		{args: []string{"exec", "--session", ""}, want: session},
		{args: []string{"exec", "--session=co"}, want: []string{"comp"}},
		{args: []string{"snapshot", "inspect", ""}, want: snapshot},
		{args: []string{"snapshot", "rm", ""}, want: snapshot},
		{args: []string{"snapshot", "rm", "compsnap", ""}, not: snapshot},
		{args: []string{"snapshot", "inspect", "./"}, want: []string{"qcow2"}, directive: dirFilterFileExt},
		{args: []string{"bash", "--resume", ""}, want: snapshot},
		{args: []string{"exec", "--resume", "comps"}, want: []string{"compsnap"}},
		{args: []string{"cp", ""}, want: []string{"comp:", id + ":"}, directive: dirNoSpace | dirNoFileComp},
		{args: []string{"cp", "./src", "co"}, want: []string{"comp:"}, directive: dirNoSpace | dirNoFileComp},
		{args: []string{"cp", "comp:/etc", ""}, not: []string{"comp:"}, directive: dirFiles},
		{args: []string{"cp", "./src", "comp:/"}, not: []string{"comp:"}},
		{args: []string{"cp", "./"}, not: []string{"comp:"}, directive: dirFiles},
		{args: []string{"exec", "--image", ""}, want: []string{layout.DefaultImage}},
		{args: []string{"bash", "--image", "def"}, want: []string{layout.DefaultImage}},
		{args: []string{"image", "inspect", ""}, want: []string{layout.DefaultImage}},
		{args: []string{"image", "rm", layout.DefaultImage, ""}, not: []string{layout.DefaultImage}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got := complete(t, home, tt.args...)
			switch tt.directive {
			case 0:
				tt.directive = dirNoFileComp
			case dirFiles:
				tt.directive = 0
			}
			if got.directive != tt.directive {
				t.Errorf("directive %d, want %d", got.directive, tt.directive)
			}
			var offered []string
			for _, v := range got.values {
				if slices.Contains(tt.want, v) {
					offered = append(offered, v)
				}
			}
			if !slices.Equal(offered, tt.want) {
				t.Errorf("offered %q, want %q in that order", got.values, tt.want)
			}
			for _, v := range tt.not {
				if slices.Contains(got.values, v) {
					t.Errorf("offered %q, want no %q", got.values, v)
				}
			}
			if strings.ContainsAny(got.raw, "\x1b\x07") {
				t.Errorf("a raw escape in the answer: %q", got.raw)
			}
		})
	}

	t.Run("descriptions", func(t *testing.T) {
		got := complete(t, home, "attach", "")
		if d := got.descs["comp"]; d != `live, `+layout.DefaultImage+`, lab\x1b]0;pwned\x07 (`+id+`)` {
			t.Errorf("comp: %q", d)
		}
		if d := got.descs[id]; !strings.HasSuffix(d, "(comp)") {
			t.Errorf("%s: %q", id, d)
		}
		got = complete(t, home, "snapshot", "inspect", "")
		if d := got.descs["compsnap"]; !strings.HasPrefix(d, "disk snapshot of "+id) {
			t.Errorf("compsnap: %q", d)
		}
	})

	t.Run("bash", func(t *testing.T) {
		if got := completeInBash(t, home, "attach", "co"); !slices.Equal(got, []string{"comp"}) {
			t.Errorf("attach co<Tab>: %q", got)
		}
		if got := completeInBash(t, home, "exec", "--resume", "comps"); !slices.Equal(got, []string{"compsnap"}) {
			t.Errorf("exec --resume comps<Tab>: %q", got)
		}
		if got := completeInBash(t, home, "cp", "./src", "co"); !slices.Equal(got, []string{"comp:"}) {
			t.Errorf("cp ./src co<Tab>: %q", got)
		}
	})

	t.Run("supervisor stopped", func(t *testing.T) {
		mustRun(t, home, "supervisor", "stop", "--all")
		if got := complete(t, home, "attach", ""); len(got.values) != 0 || got.directive != dirNoFileComp {
			t.Errorf("attach with no supervisor: %q directive %d", got.values, got.directive)
		}
		if supervisorRuns(t, home) {
			t.Fatal("a completion started the supervisor")
		}
		// Snapshots and images are read from disk.
		if got := complete(t, home, "bash", "--resume", ""); !slices.Contains(got.values, "compsnap") {
			t.Errorf("--resume with no supervisor: %q", got.values)
		}
		if got := complete(t, home, "exec", "--image", ""); !slices.Contains(got.values, layout.DefaultImage) {
			t.Errorf("--image with no supervisor: %q", got.values)
		}
		if supervisorRuns(t, home) {
			t.Fatal("a completion started the supervisor")
		}
	})
}
