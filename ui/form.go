package ui

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/sessions"
)

// Fields of the new-session form, in order.
const (
	fieldImage = iota
	fieldName
	fieldCPUs
	fieldMemory
	fieldMounts
	fieldHosts
	fieldSecrets
	// fieldHost, the machine (context) to create it on, is last and
	// shown only when the dashboard shows several.
	fieldHost
	numFields
)

var fieldLabels = [numFields]string{"Image", "Name", "CPUs", "Memory", "Mounts", "Allowed hosts", "Secrets", "Host"}

var fieldHints = [numFields]string{
	"name:tag or image ID",
	"optional; letters, digits, . _ -",
	"1 to 64 (empty: 1)",
	"e.g. 512M or 2G (empty: 256M)",
	"HOST:GUEST[:ro], space-separated",
	"patterns such as api.github.com *.npmjs.org",
	"NAME@HOST[,HOST...]; the value is $NAME here",
	"", // the hosts' names, filled in by the form
}

// flagFields points the builder's field errors (named by flag) at the
// form's fields; any other error belongs to the image.
var flagFields = map[string]int{
	"--name":         fieldName,
	"--cpus":         fieldCPUs,
	"--memory":       fieldMemory,
	"--mount-hostfs": fieldMounts,
	"--allow-host":   fieldHosts,
	"--host-secret":  fieldSecrets,
}

// formValues is what the user typed, one string per field.
type formValues [numFields]string

// fieldError is a validation error that belongs to one field.
type fieldError struct {
	field int
	err   error
}

func (e *fieldError) Error() string { return e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// buildRequest validates the form and turns it into a create request. A
// failure is a *fieldError naming the field to fix; nothing is sent.
// getenv supplies secret values (the dashboard's environment). Mounts
// take the CLI's --mount-hostfs syntax; their host directories are
// resolved here, on the dashboard's host, as the CLI does, unless the
// session is to run elsewhere (another machine, whose supervisor checks
// them).
func buildRequest(v formValues, elsewhere bool, getenv func(string) string) (sessions.CreateRequest, error) {
	fail := func(f int, err error) (sessions.CreateRequest, error) {
		return sessions.CreateRequest{}, &fieldError{field: f, err: err}
	}
	in := sessions.SpecFlags{
		Image:  strings.TrimSpace(v[fieldImage]),
		Name:   strings.TrimSpace(v[fieldName]),
		Memory: strings.TrimSpace(v[fieldMemory]),
		// The host field is the form's to check (it knows the hosts).
		Elsewhere: elsewhere,
	}
	if strings.ContainsAny(in.Image, " \t") {
		return fail(fieldImage, fmt.Errorf("image %q: no spaces in an image reference", in.Image))
	}
	if c := strings.TrimSpace(v[fieldCPUs]); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 {
			return fail(fieldCPUs, fmt.Errorf("CPUs %q: use a whole number from 1 to 64", c))
		}
		in.CPUs = n
	}
	// Secrets are NAME@HOST[,HOST...] with the value taken from the
	// dashboard's environment: a value typed here would sit in plain
	// sight on the screen (the policy editor takes values masked).
	in.Net.HostSecret = strings.Fields(v[fieldSecrets])
	for _, sec := range in.Net.HostSecret {
		if strings.Contains(sec, "=") {
			return fail(fieldSecrets, fmt.Errorf("%s: no =VALUE here; export the variable before starting gondolin, or set the value masked in the policy editor (p)", strings.SplitN(sec, "=", 2)[0]))
		}
	}
	in.Net.AllowHost = strings.Fields(strings.ReplaceAll(v[fieldHosts], ",", " "))
	in.HostFS = strings.Fields(v[fieldMounts])
	for _, mt := range in.HostFS {
		if err := checkMount(mt); err != nil {
			return fail(fieldMounts, fmt.Errorf("mount %q: %v", mt, err))
		}
	}
	spec, err := in.Build(getenv)
	if err != nil {
		field, ok := flagFields[errdefs.FieldOf(err)]
		if !ok {
			field = fieldImage
		}
		return fail(field, err)
	}
	return sessions.CreateRequest{Spec: *spec, SecretValues: spec.SecretValues()}, nil
}

// checkMount catches a mistyped mount before ParseMounts looks at the
// host, with a message in the form's terms rather than the CLI flag's.
func checkMount(s string) error {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return errors.New("use HOST:GUEST or HOST:GUEST:ro")
	}
	if !strings.HasPrefix(parts[1], "/") {
		return errors.New("the guest path must be absolute")
	}
	if len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw" {
		return fmt.Errorf("%q: the mode is ro or rw", parts[2])
	}
	return nil
}

// sessionForm is the new-session dialog.
type sessionForm struct {
	inputs [numFields]textinput.Model
	fields int // how many are shown: all, or all but the host
	focus  int
	err    *fieldError
}

func newSessionForm(m *Model) *sessionForm {
	f := &sessionForm{}
	for i := range f.inputs {
		in := textinput.New()
		in.Prompt = ""
		in.CharLimit = 512
		st := in.Styles()
		st.Cursor.Blink = false
		in.SetStyles(st)
		f.inputs[i] = in
	}
	f.inputs[fieldImage].SetValue(m.opts.DefaultImage)
	f.inputs[fieldHost].SetValue(m.formHost().Name)
	f.fields = numFields
	if !m.multi() {
		f.fields = fieldHost // no host field
	}
	return f
}

// formHost is the host the new-session form proposes.
func (m *Model) formHost() *host {
	if h := m.hostNamed(m.opts.Host); h != nil {
		return h
	}
	return m.hosts[0]
}

// host returns the host the form names, or a *fieldError.
func (f *sessionForm) host(m *Model) (*host, error) {
	name := strings.TrimSpace(f.inputs[fieldHost].Value())
	if name == "" {
		return m.formHost(), nil
	}
	if h := m.hostNamed(name); h != nil {
		return h, nil
	}
	return nil, &fieldError{field: fieldHost, err: fmt.Errorf("no host %q: use one of %s (gondolin context ls)", name, strings.Join(m.hostNames(), ", "))}
}

func (f *sessionForm) focusCmd() tea.Cmd {
	for i := range f.inputs {
		f.inputs[i].Blur()
	}
	return f.inputs[f.focus].Focus()
}

func (f *sessionForm) values() formValues {
	var v formValues
	for i, in := range f.inputs {
		v[i] = in.Value()
	}
	return v
}

func (f *sessionForm) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	k, ok := msg.(tea.KeyPressMsg)
	if !ok {
		var cmd tea.Cmd
		f.inputs[f.focus], cmd = f.inputs[f.focus].Update(msg)
		return false, cmd
	}
	switch k.String() {
	case "esc", "ctrl+c":
		return true, nil
	case "tab", "down":
		f.focus = (f.focus + 1) % f.fields
		return false, f.focusCmd()
	case "shift+tab", "up":
		f.focus = (f.focus + f.fields - 1) % f.fields
		return false, f.focusCmd()
	case "enter":
		h, err := f.host(m)
		var req sessions.CreateRequest
		if err == nil {
			req, err = buildRequest(f.values(), h.Elsewhere, os.Getenv)
		}
		if err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				f.err = fe
				f.focus = fe.field
			}
			return false, f.focusCmd()
		}
		req.Rows, req.Cols = uint16(max(m.height, 24)), uint16(max(m.width, 80))
		where := ""
		if h.multi {
			where = " on " + h.Name
		}
		return true, tea.Batch(m.setStatus("creating "+orDefault(req.Spec.Name, "a session")+where+"… (its VM boots)"), m.create(h, req, f))
	}
	var cmd tea.Cmd
	f.inputs[f.focus], cmd = f.inputs[f.focus].Update(k)
	if f.err != nil && f.err.field == f.focus {
		f.err = nil
	}
	return false, cmd
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// createDoneMsg reports a create; on failure the form comes back with
// what was typed.
type createDoneMsg struct {
	host    *host
	session sessions.Session
	err     error
	form    *sessionForm
}

// create creates a session on h (resumes one, with req.Resume).
func (m *Model) create(h *host, req sessions.CreateRequest, form *sessionForm) tea.Cmd {
	m.creates++
	return func() tea.Msg {
		// Creating boots a VM: allow it far longer than a plain request.
		ctx, cancel := contextWithTimeout(m.ctx, createTimeout)
		defer cancel()
		s, err := h.Backend.Create(ctx, req)
		return createDoneMsg{host: h, session: s, err: err, form: form}
	}
}

func (m *Model) onCreateDone(msg createDoneMsg) tea.Cmd {
	m.creates--
	if msg.err != nil {
		if m.dialog == nil && msg.form != nil {
			// A taken name is a conflict; other bad input names its flag
			// (errdefs.FieldOf works across the API).
			field, ok := flagFields[errdefs.FieldOf(msg.err)]
			switch {
			case errors.Is(msg.err, errdefs.ErrConflict):
				field = fieldName
			case !ok:
				field = fieldImage
			}
			msg.form.err = &fieldError{field: field, err: msg.err}
			msg.form.focus = msg.form.err.field
			m.dialog = msg.form
			return tea.Batch(m.setError(fmt.Errorf("create: %w", msg.err)), msg.form.focusCmd(), m.refresh())
		}
		// The supervisor has taken the session off its list (its
		// removal's event relists too, unless the stream is down).
		return tea.Batch(m.setError(fmt.Errorf("create: %w", msg.err)), m.refresh())
	}
	m.selected, m.picked = rowKey(msg.host, msg.session.ID), true
	if len(msg.session.PTYs) > 0 {
		m.ptyChoice[m.selected] = msg.session.PTYs[0].ID
	}
	// Shown at once, as the create answered: until its host's next
	// list has it, another host's list would rebuild the table without
	// it and move the selection away.
	if !slices.ContainsFunc(msg.host.list, func(s sessions.Session) bool { return s.ID == msg.session.ID }) {
		s := msg.session
		safeSession(&s)
		msg.host.list = append(msg.host.list, s)
		m.rebuild()
	}
	return tea.Batch(m.setStatus("created "+displayName(msg.session)+": enter attaches"), m.refresh(), m.fetchPreview(true))
}

func (f *sessionForm) view(m *Model, w, h int) string {
	w = min(w, 76)
	inner := w - 4
	labelW := 14
	var body []string
	for i := range f.inputs[:f.fields] {
		label := fit(fieldLabels[i], labelW, false)
		if i == f.focus {
			label = m.st.focused.Render(label)
		} else {
			label = m.st.label.Render(label)
		}
		marker := "  "
		if i == f.focus {
			marker = "> "
		}
		// The input draws one more cell than its width (the cursor).
		f.inputs[i].SetWidth(max(inner-labelW-5, 8))
		body = append(body, marker+label+" "+f.inputs[i].View())
		hint := fieldHints[i]
		if i == fieldHost {
			hint = strings.Join(m.hostNames(), " ")
		}
		if f.err != nil && f.err.field == i {
			for _, l := range wrap(f.err.Error(), inner-labelW-3) {
				body = append(body, strings.Repeat(" ", labelW+3)+m.st.errText.Render(l))
			}
		} else if i == f.focus {
			body = append(body, strings.Repeat(" ", labelW+3)+m.st.dim.Render(hint))
		}
	}
	body = append(body, "", m.st.key.Render("enter")+" create   "+m.st.key.Render("tab")+" next field   "+m.st.key.Render("esc")+" cancel")
	return m.box("New session", body, w, h)
}
