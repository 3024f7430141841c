// Boots GraphiQL from the files the ledger binary serves itself (no CDN).
// URL parameters: `query` (initial query), `headers` (initial headers JSON),
// `autorun=1` (run `query` once through GraphiQL's own fetcher and show the
// response in #autorun-result; used by the headless browser test).
(function () {
  var params = new URLSearchParams(window.location.search);
  var wsScheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
  var fetcher = GraphiQL.createFetcher({
    url: window.location.origin + '/graphql',
    subscriptionUrl: wsScheme + window.location.host + '/graphql/ws',
  });
  var defaultQuery =
    '# Put your API key in the Headers tab below:\n' +
    '#   {"Authorization": "Bearer <key>"}\n' +
    'query Customer {\n  customer(id: "ada") {\n    id\n    stage\n    historicalValue { orderCount net { minor currency } }\n  }\n}\n';
  var props = {
    fetcher: fetcher,
    defaultQuery: defaultQuery,
    defaultHeaders: '{\n  "Authorization": "Bearer <your API key>"\n}',
    shouldPersistHeaders: true,
  };
  if (params.get('query')) props.query = params.get('query');
  if (params.get('headers')) props.headers = params.get('headers');
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, props)
  );
  if (params.get('autorun') === '1') {
    var out = document.getElementById('autorun-result');
    var headers = JSON.parse(params.get('headers') || '{}');
    Promise.resolve(fetcher({ query: params.get('query') || '{ __typename }' }, { headers: headers }))
      .then(function (result) {
        // GraphiQL's fetcher may answer with an async iterable (incremental
        // delivery); the first payload is the whole result for a query.
        if (result && typeof result[Symbol.asyncIterator] === 'function') {
          return result[Symbol.asyncIterator]().next().then(function (step) {
            return step.value;
          });
        }
        return result;
      })
      .then(function (result) {
        out.textContent = JSON.stringify(result);
      })
      .catch(function (error) {
        out.textContent = 'autorun failed: ' + error;
      });
  }
})();
