// Renders /api/openapi.json as a list of operations and schemas. No dependencies; all
// text reaches the DOM through textContent.

function h(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = String(text);
  return el;
}

function schemaText(schema) {
  return JSON.stringify(schema, null, 2);
}

function renderOperation(path, method, op) {
  const section = h('section', 'card');
  const title = h('h2', '');
  title.append(h('code', '', `${method.toUpperCase()} ${path}`));
  section.append(title, h('p', '', op.summary || ''));
  const params = Array.isArray(op.parameters) ? op.parameters : [];
  if (params.length > 0) {
    const list = h('ul', '');
    for (const p of params) list.append(h('li', '', `${p.name} (${p.in}${p.required ? ', required' : ''}): ${p.description || ''}`));
    section.append(h('h3', '', 'Parameters'), list);
  }
  if (op.requestBody && op.requestBody.content) {
    section.append(h('h3', '', 'Body'));
    for (const [type, media] of Object.entries(op.requestBody.content)) {
      section.append(h('p', '', type), h('pre', '', schemaText(media.schema)));
    }
  }
  const responses = h('ul', '');
  for (const [code, response] of Object.entries(op.responses || {})) {
    const ref = response.content && Object.values(response.content)[0];
    const schema = ref && ref.schema && ref.schema.$ref ? ` → ${ref.schema.$ref.split('/').pop()}` : '';
    responses.append(h('li', '', `${code}: ${response.description || ''}${schema}`));
  }
  section.append(h('h3', '', 'Responses'), responses);
  return section;
}

async function main() {
  const status = document.getElementById('docs-status');
  const root = document.getElementById('docs');
  let doc;
  try {
    const response = await fetch('/api/openapi.json', { cache: 'no-store' });
    doc = await response.json();
  } catch {
    status.textContent = 'Could not load /api/openapi.json from the server.';
    return;
  }
  status.textContent = `${doc.info.title} ${doc.info.version} — OpenAPI ${doc.openapi}`;
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) root.append(renderOperation(path, method, op));
  }
  root.append(h('h2', '', 'Schemas'));
  for (const [name, schema] of Object.entries((doc.components && doc.components.schemas) || {})) {
    root.append(h('h3', '', name), h('pre', '', schemaText(schema)));
  }
}

main();
