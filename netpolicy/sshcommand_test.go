package netpolicy

import (
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestParseGitCommand(t *testing.T) {
	ok := []struct {
		in, prog, path string
	}{
		// What git sends: the path in single quotes (sq_quote).
		{"git-upload-pack 'org/repo.git'", "git-upload-pack", "org/repo.git"},
		{"git-receive-pack '/org/repo.git'", "git-receive-pack", "/org/repo.git"},
		{"git-upload-archive 'org/repo.git'", "git-upload-archive", "org/repo.git"},
		{"git-upload-pack '~/repo.git'", "git-upload-pack", "~/repo.git"},
		{"git-upload-pack 'it'\\''s.git'", "git-upload-pack", "it's.git"},
		{"git-upload-pack 'wow'\\!'.git'", "git-upload-pack", "wow!.git"},
		{"git-upload-pack 'my repo.git'", "git-upload-pack", "my repo.git"},
		{"git-upload-pack '$(id);`x`|&<>*\"'", "git-upload-pack", "$(id);`x`|&<>*\""},
		{"git-upload-pack 'dépôt/ünï.git'", "git-upload-pack", "dépôt/ünï.git"},
		// Unquoted, and JGit's ~user/'path'.
		{"git-upload-pack org/repo.git", "git-upload-pack", "org/repo.git"},
		{"git-upload-pack ~alice/'repo.git'", "git-upload-pack", "~alice/repo.git"},
		{"git-upload-pack a''b", "git-upload-pack", "ab"},
		{"git-receive-pack 'a-b_c+d@e:f,g%h=i'", "git-receive-pack", "a-b_c+d@e:f,g%h=i"},
	}
	for _, tt := range ok {
		t.Run(tt.in, func(t *testing.T) {
			c, err := parseGitCommand(tt.in)
			if err != nil || c.Program != tt.prog || c.Path != tt.path {
				t.Fatalf("= %+v, %v; want %s %q", c, err, tt.prog, tt.path)
			}
			back, err := parseGitCommand(c.String())
			if err != nil || back != c {
				t.Errorf("String() %q parses as %+v, %v", c.String(), back, err)
			}
		})
	}
	bad := []struct {
		in, why string
	}{
		{"sh -i", "not one of git's commands"},
		{"sh -c id", "not one of git's commands"},
		{"nc 10.0.0.5 5432", "not one of git's commands"},
		{"git upload-pack 'org/repo'", "not one of git's commands"},
		{"/usr/bin/git-upload-pack 'org/repo'", "not one of git's commands"},
		{"GIT_DIR=/ git-upload-pack 'org/repo'", "not one of git's commands"},
		{"git-lfs-authenticate 'org/repo' download", "not one of git's commands"},
		{"git-upload-pack\t'org/repo'", "not one of git's commands"},
		{"", "not one of git's commands"},
		{"git-upload-pack", "no repository path"},
		{"git-upload-pack ", "no repository path"},
		{"git-upload-pack 'org/repo'; sh", `';' outside quotes`},
		{"git-upload-pack 'org/repo';sh", `';' outside quotes`},
		{"git-upload-pack 'org/repo' && sh", "more than one argument"},
		{"git-upload-pack 'org/repo'&&sh", `'&' outside quotes`},
		{"git-upload-pack 'org/repo'|sh", `'|' outside quotes`},
		{"git-upload-pack 'org/repo'\nsh", `'\n' outside quotes`},
		{"git-upload-pack 'org/repo'\rsh", `'\r' outside quotes`},
		{"git-upload-pack 'org/repo'>/tmp/x", `'>' outside quotes`},
		{"git-upload-pack <x", `'<' outside quotes`},
		{"git-upload-pack `sh`", "'`' outside quotes"},
		{"git-upload-pack $(sh)", `'$' outside quotes`},
		{"git-upload-pack $HOME/x", `'$' outside quotes`},
		{"git-upload-pack \"org/repo\"", `'"' outside quotes`},
		{"git-upload-pack repo*", `'*' outside quotes`},
		{"git-upload-pack repo?", `'?' outside quotes`},
		{"git-upload-pack [r]epo", `'[' outside quotes`},
		{"git-upload-pack {a,b}", `'{' outside quotes`},
		{"git-upload-pack repo#x", `'#' outside quotes`},
		{"git-upload-pack (repo)", `'(' outside quotes`},
		{"git-upload-pack 'org/repo\x00'", "control character"},
		{"git-upload-pack org/repo\x00", `'\x00' outside quotes`},
		{"git-upload-pack 'a\nb'", "control character"},
		{"git-upload-pack 'a\x1b[31mb'", "control character"},
		{"git-upload-pack 'a\u0085b'", "control character"},
		{"git-upload-pack '\xff'", "not UTF-8"},
		{"git-upload-pack --upload-pack=x repo", "more than one argument"},
		{"git-upload-pack --upload-pack=x", "starts with -"},
		{"git-upload-pack '--upload-pack=x'", "starts with -"},
		{"git-upload-pack '-'", "starts with -"},
		{"git-upload-pack -- 'repo'", "more than one argument"},
		{"git-upload-pack 'org/repo' extra", "more than one argument"},
		{"git-upload-pack 'org/repo' ", "more than one argument"},
		{"git-upload-pack  'org/repo'", "more than one argument"},
		{"git-upload-pack 'org/repo'\t", "more than one argument"},
		{"git-upload-pack ''", "empty repository path"},
		{"git-upload-pack 'org/repo", "unterminated quote"},
		{"git-upload-pack org/repo'", "unterminated quote"},
		{"git-upload-pack 'a'\\", `backslash other than`},
		{"git-upload-pack 'a'\\n", `backslash other than`},
		{"git-upload-pack 'a\\'b'", "unterminated quote"}, // no escapes inside quotes
		{"git-upload-pack '" + strings.Repeat("a", maxGitPath+1) + "'", "longer than"},
	}
	for _, tt := range bad {
		t.Run(tt.in, func(t *testing.T) {
			c, err := parseGitCommand(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.why) {
				t.Fatalf("= %+v, %v; want an error with %q", c, err, tt.why)
			}
		})
	}
}

func TestValidGitProtocol(t *testing.T) {
	for _, v := range []string{"version=2", "version=1", "version=2:object-format=sha256"} {
		if !validGitProtocol(v) {
			t.Errorf("%q refused", v)
		}
	}
	for _, v := range []string{"", "version=2\n", "version=2;id", "$(id)", "a b", "~/x", strings.Repeat("v", 257)} {
		if validGitProtocol(v) {
			t.Errorf("%q passed", v)
		}
	}
}

// shellOutsideQuotes returns the bytes of s that a POSIX shell reads
// outside single quotes (a \x pair counts as its x), independently of
// shellWord, and whether the quotes balance.
func shellOutsideQuotes(s string) (string, bool) {
	var out []byte
	in := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			in = !in
		case in:
		case s[i] == '\\' && i+1 < len(s):
			i++
		default:
			out = append(out, s[i])
		}
	}
	return string(out), !in
}

// FuzzParseGitCommand: whatever the guest sends, an accepted command is
// one of git's with one path that is no option and holds no control
// character; outside quotes it used no shell syntax; and what goes
// upstream (String) reads back as the same command.
func FuzzParseGitCommand(f *testing.F) {
	for _, s := range []string{
		"git-upload-pack 'org/repo.git'", "git-receive-pack '/a'\\''b'", "git-upload-archive ~u/'r'",
		"git-upload-pack 'x'; sh", "git-upload-pack --upload-pack=x repo", "sh -i", "git-upload-pack 'a\x00'",
		"git-upload-pack 'a'\\!'b'", "git-upload-pack a''b", "git-upload-pack '-x'", "git-upload-pack $(id)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		c, err := parseGitCommand(cmd)
		if err != nil {
			if c != (gitCommand{}) {
				t.Fatalf("error %v with a result %+v", err, c)
			}
			return
		}
		if !slices.Contains(gitSSHCommands, c.Program) || !strings.HasPrefix(cmd, c.Program+" ") {
			t.Fatalf("%q: program %q", cmd, c.Program)
		}
		if c.Path == "" || len(c.Path) > maxGitPath || c.Path[0] == '-' || !utf8.ValidString(c.Path) || strings.ContainsFunc(c.Path, unicode.IsControl) {
			t.Fatalf("%q: path %q", cmd, c.Path)
		}
		outside, balanced := shellOutsideQuotes(strings.TrimPrefix(cmd, c.Program+" "))
		if !balanced || strings.ContainsAny(outside, " \t\n\r\x00;&|<>()$`\"*?[]{}#\\") {
			t.Fatalf("%q accepted with shell syntax %q outside quotes", cmd, outside)
		}
		up := c.String()
		back, err := parseGitCommand(up)
		if err != nil || back != c {
			t.Fatalf("%q: upstream form %q reads as %+v, %v", cmd, up, back, err)
		}
		if up != back.String() {
			t.Fatalf("%q: String not stable: %q then %q", cmd, up, back.String())
		}
		// git's quoting: the path's bytes all inside quotes, but for
		// the escaped ' and !.
		if o, ok := shellOutsideQuotes(strings.TrimPrefix(up, c.Program+" ")); !ok || strings.Trim(o, "'!") != "" {
			t.Fatalf("%q: upstream form %q leaves %q outside quotes", cmd, up, o)
		}
	})
}
