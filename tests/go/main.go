// Command render executes an Ollama Modelfile TEMPLATE with Go's text/template on the data Ollama gives a
// .Messages template, for the gguf-forge tests.
//
// stdin: {"template": "...", "system": "Modelfile SYSTEM or empty", "conversations": [[{"role","content"}...]...]}
// stdout: a JSON array with one rendered string per conversation (a conversation the template fails on gives
// "\x00template error: ..."), or {"error": "..."} and exit 1 when the template does not parse.
//
// As Ollama's server does before rendering a chat: when the request's first message is not a system message
// and the Modelfile has SYSTEM, a system message with that text goes first; consecutive messages of the same
// role (except tool) are merged, joined by a blank line; .System is every system message joined by a blank
// line (they also stay in .Messages); the template is parsed with missingkey=zero and Ollama's extra funcs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Ollama's api types as a chat request carries them (api/types.go) ...
type ToolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	err := json.Unmarshal(b, &a)
	*pt = a
	return err
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

// ToolPropertiesMap: a nested property's properties in insertion order (api.ToolPropertiesMap, an ordered map
// with unexported fields: a template can call its ToMap and Len methods, also on a nil pointer).
type ToolPropertiesMap struct {
	keys []string
	m    map[string]ToolProperty
}

func (t *ToolPropertiesMap) Len() int {
	if t == nil || t.m == nil {
		return 0
	}
	return len(t.keys)
}

func (t *ToolPropertiesMap) ToMap() map[string]ToolProperty {
	if t == nil || t.m == nil {
		return nil
	}
	out := make(map[string]ToolProperty, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

func (t ToolPropertiesMap) MarshalJSON() ([]byte, error) {
	if t.m == nil {
		return []byte("null"), nil
	}
	var sb strings.Builder
	sb.WriteString("{")
	for i, k := range t.keys {
		if i > 0 {
			sb.WriteString(",")
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(t.m[k])
		if err != nil {
			return nil, err
		}
		sb.Write(kb)
		sb.WriteString(":")
		sb.Write(vb)
	}
	sb.WriteString("}")
	return []byte(sb.String()), nil
}

func (t *ToolPropertiesMap) UnmarshalJSON(b []byte) error {
	t.m = map[string]ToolProperty{}
	t.keys = nil
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k := tok.(string)
		var v ToolProperty
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if _, ok := t.m[k]; !ok {
			t.keys = append(t.keys, k)
		}
		t.m[k] = v
	}
	return nil
}

type Tool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs,omitempty"`
			Items      any                     `json:"items,omitempty"`
			Required   []string                `json:"required,omitempty"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

// ... and the shapes Ollama's template package hands a template (template/template.go): tools, properties and
// arguments print as compact JSON, maps range in key order.
type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

// conversation: a list of messages, or {"messages": [...], "tools": [...], "think": true|false|"low"|...|null}
type conversation struct {
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools"`
	Think    any       `json:"think"`
}

// thinkValues: .Think, .ThinkLevel, .IsThinkSet as Ollama's api.ThinkValue gives them (Bool(), String(): "medium"
// for true, "" for false, the level for a string).
func thinkValues(v any) (bool, string, bool) {
	switch t := v.(type) {
	case bool:
		if t {
			return true, "medium", true
		}
		return false, "", true
	case string:
		return t == "high" || t == "medium" || t == "low" || t == "max", t, true
	}
	return false, "", false
}

type request struct {
	Template      string            `json:"template"`
	System        string            `json:"system"`
	Conversations []json.RawMessage `json:"conversations"`
	Tag           bool              `json:"tag"`
	ThinkingTags  bool              `json:"thinking_tags"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

// messagesFor builds the message list as Ollama's server and template package do.
func messagesFor(system string, msgs []Message) (string, []*templateMessage) {
	if system != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: system}}, msgs...)
	}
	var systems []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == m.Role && m.Role != "tool" {
			out[n-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, &m)
	}
	var result []*templateMessage
	for _, m := range out {
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{
				Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments)}})
		}
		result = append(result, &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking,
			Images: m.Images, ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID})
	}
	return strings.Join(systems, "\n\n"), result
}

func toolsFor(tools []Tool) []templateTool {
	if tools == nil {
		return nil
	}
	out := make([]templateTool, len(tools))
	for i, t := range tools {
		p := t.Function.Parameters
		out[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateToolFunctionParameters{Type: p.Type, Defs: p.Defs, Items: p.Items,
				Required: p.Required, Properties: templateProperties(p.Properties)}}}
	}
	return out
}

func fail(err error) {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail(err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fail(err)
	}
	// Ollama's template.Parse walks every defined template (Vars / Identifiers) and refuses a {{template "x"}}
	// without a pipeline
	for _, t := range tmpl.Templates() {
		if t.Tree != nil && templateWithoutPipe(t.Tree.Root) {
			fail(fmt.Errorf("undefined template specified"))
		}
	}
	if req.ThinkingTags {
		open, close := inferThinkingTags(tmpl)
		b, _ := json.Marshal(map[string]string{"open": open, "close": close})
		fmt.Println(string(b))
		return
	}
	if req.Tag {
		b, _ := json.Marshal(map[string]string{"tag": parseTag(tmpl)})
		fmt.Println(string(b))
		return
	}
	results := make([]string, 0, len(req.Conversations))
	for _, raw := range req.Conversations {
		var conv conversation
		if len(raw) > 0 && raw[0] == '[' {
			err = json.Unmarshal(raw, &conv.Messages)
		} else {
			err = json.Unmarshal(raw, &conv)
		}
		if err != nil {
			fail(err)
		}
		system, msgs := messagesFor(req.System, conv.Messages)
		var sb strings.Builder
		think, level, set := thinkValues(conv.Think)
		data := map[string]any{
			"System":     system,
			"Messages":   msgs,
			"Tools":      toolsFor(conv.Tools),
			"Response":   "",
			"Think":      think,
			"ThinkLevel": level,
			"IsThinkSet": set,
		}
		if err := tmpl.Execute(&sb, data); err != nil {
			// an execution error is that conversation's result (Ollama answers the request with it)
			results = append(results, "\x00template error: "+err.Error())
			continue
		}
		results = append(results, sb.String())
	}
	b, err := json.Marshal(results)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

// parseTag is how Ollama's tools package finds the text a tool call starts with (tools/template.go): the first
// non-blank text node inside the first {{ if }} whose pipeline names .ToolCalls, cut before "{" and trimmed;
// "{" when there is none. Written here from that description for the tests.
func parseTag(tmpl *template.Template) string {
	tc := findToolCallNode(tmpl.Tree.Root.Nodes)
	if tc == nil {
		return "{"
	}
	tn := findTextNode(tc.List.Nodes)
	if tn == nil {
		return "{"
	}
	tag := strings.ReplaceAll(string(tn.Text), "\r\n", "\n")
	tag, _, _ = strings.Cut(tag, "{")
	tag = strings.TrimSpace(tag)
	if tag == "" {
		return "{"
	}
	return tag
}

func findToolCallNode(nodes []parse.Node) *parse.IfNode {
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.IfNode:
			for _, cmd := range n.Pipe.Cmds {
				for _, arg := range cmd.Args {
					if f, ok := arg.(*parse.FieldNode); ok && slices(f.Ident, "ToolCalls") {
						return n
					}
				}
			}
			if r := findToolCallNode(n.List.Nodes); r != nil {
				return r
			}
			if n.ElseList != nil {
				if r := findToolCallNode(n.ElseList.Nodes); r != nil {
					return r
				}
			}
		case *parse.ListNode:
			if r := findToolCallNode(n.Nodes); r != nil {
				return r
			}
		case *parse.RangeNode:
			if r := findToolCallNode(n.List.Nodes); r != nil {
				return r
			}
			if n.ElseList != nil {
				if r := findToolCallNode(n.ElseList.Nodes); r != nil {
					return r
				}
			}
		}
	}
	return nil
}

func findTextNode(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.TextNode:
			if len(strings.TrimSpace(string(n.Text))) == 0 {
				continue
			}
			return n
		case *parse.IfNode:
			if t := findTextNode(n.List.Nodes); t != nil {
				return t
			}
			if n.ElseList != nil {
				if t := findTextNode(n.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		case *parse.ListNode:
			if t := findTextNode(n.Nodes); t != nil {
				return t
			}
		case *parse.RangeNode:
			if t := findTextNode(n.List.Nodes); t != nil {
				return t
			}
			if n.ElseList != nil {
				if t := findTextNode(n.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		}
	}
	return nil
}

func templateWithoutPipe(n parse.Node) bool {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return false
		}
		for _, c := range x.Nodes {
			if templateWithoutPipe(c) {
				return true
			}
		}
	case *parse.TemplateNode:
		return x.Pipe == nil
	case *parse.IfNode:
		return templateWithoutPipe(x.List) || (x.ElseList != nil && templateWithoutPipe(x.ElseList))
	case *parse.RangeNode:
		return templateWithoutPipe(x.List) || (x.ElseList != nil && templateWithoutPipe(x.ElseList))
	case *parse.WithNode:
		return templateWithoutPipe(x.List) || (x.ElseList != nil && templateWithoutPipe(x.ElseList))
	}
	return false
}

func slices(idents []string, s string) bool {
	for _, x := range idents {
		if x == s {
			return true
		}
	}
	return false
}

// inferThinkingTags is how Ollama decides that a TEMPLATE supports thinking and which tags surround the reasoning
// it parses out of a reply (thinking/template.go InferTags): at each .Thinking field inside a range over
// .Messages, the nearest enclosing list's first and last text nodes (trimmed); the last one found wins. Written
// here from that description for the tests.
func inferThinkingTags(tmpl *template.Template) (string, string) {
	var ancestors []parse.Node
	open, close := "", ""
	var visit func(n parse.Node)
	visit = func(n parse.Node) {
		if n == nil {
			return
		}
		ancestors = append(ancestors, n)
		defer func() { ancestors = ancestors[:len(ancestors)-1] }()
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" {
			var rng *parse.RangeNode
			for i := len(ancestors) - 1; i >= 0; i-- {
				if r, ok := ancestors[i].(*parse.RangeNode); ok {
					rng = r
					break
				}
			}
			if rng != nil && pipeUsesField(rng.Pipe, "Messages") {
				for i := len(ancestors) - 1; i >= 0; i-- {
					if l, ok := ancestors[i].(*parse.ListNode); ok {
						if t, ok := l.Nodes[0].(*parse.TextNode); ok {
							open = strings.TrimSpace(t.String())
						}
						if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
							close = strings.TrimSpace(t.String())
						}
						break
					}
				}
			}
		}
		switch x := n.(type) {
		case *parse.ListNode:
			for _, c := range x.Nodes {
				visit(c)
			}
		case *parse.IfNode:
			visit(x.Pipe)
			visit(x.List)
			if x.ElseList != nil {
				visit(x.ElseList)
			}
		case *parse.RangeNode:
			visit(x.Pipe)
			visit(x.List)
			if x.ElseList != nil {
				visit(x.ElseList)
			}
		case *parse.PipeNode:
			for _, c := range x.Cmds {
				visit(c)
			}
		case *parse.CommandNode:
			for _, a := range x.Args {
				visit(a)
			}
		case *parse.ActionNode:
			visit(x.Pipe)
		}
	}
	visit(tmpl.Tree.Root)
	return open, close
}

func pipeUsesField(p *parse.PipeNode, field string) bool {
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			if f, ok := a.(*parse.FieldNode); ok && f.Ident[0] == field {
				return true
			}
		}
	}
	return false
}
