// Application Insights (workspace-based) for the gate's logs, including its GATE_DECISION lines.
// Local authentication is off: telemetry is accepted only with an Entra token of an identity that
// holds Monitoring Metrics Publisher, so the connection string in the app settings is no secret.
//
// Over those logs: the audit workbook and the alert rules (docs/monitoring.md).
// Their Kusto queries are the files in ../queries, loaded here so there is one copy; tests/
// test_monitoring_queries.py checks that they read only fields and lines the code writes.

param workspaceName string
param applicationInsightsName string
param location string
param tags object = {}

@description('Days the Log Analytics workspace keeps data.')
param retentionInDays int = 30

@description('Resource id of an action group the alert rules notify; empty: the alerts fire in Azure Monitor only.')
param actionGroupId string = ''

@description('Resource id of the upstream registry\'s Event Grid system topic whose dead letters raise an alert; empty: no such alert.')
param deadLetterTopicId string = ''

@description('Principal (object) id of the gate\'s identity: one of the two callers that may read the vault\'s secrets.')
param gatePrincipalId string

@description('Principal (object) id of the runner identity: the other.')
param runnerPrincipalId string

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output id string = insights.id
output name string = insights.name
// where the diagnostic settings of the vault, the registries and the upstream topic write
output workspaceId string = workspace.id

// -- the audit workbook -------------------------------------------------------------------------
// Workbook content is the JSON of the Workbooks schema (github.com/microsoft/
// Application-Insights-Workbooks, schema/workbook.json): items of type 1 (markdown), 9 (parameters)
// and 3 (a KqlItem/1.0 query; queryType 0 is a logs query). The ARM resource takes it as a string
// (properties.serializedData: learn.microsoft.com/azure/azure-monitor/visualize/resource-manager-workbooks).

var workbookParameters = [
  {
    id: guid('gate-audit-workbook', 'TimeRange')
    version: 'KqlParameterItem/1.0'
    name: 'TimeRange'
    label: 'Time range'
    type: 4
    isRequired: true
    value: {
      durationMs: 604800000
    }
    typeSettings: {
      allowCustom: true
    }
  }
  {
    id: guid('gate-audit-workbook', 'FunctionHost')
    version: 'KqlParameterItem/1.0'
    name: 'FunctionHost'
    label: 'Function app host (for record URLs)'
    type: 1
    value: ''
    description: 'Host name of the gate\'s function app (azd env get-value AZURE_FUNCTION_URL, without https://); empty: no URL column.'
  }
]

var workbookTiles = [
  {
    name: 'decisions-over-time'
    title: 'Decisions over time, by rule and verdict'
    query: loadTextContent('../queries/workbook-decisions-over-time.kql')
    visualization: 'timechart'
  }
  {
    name: 'stable-digests'
    title: 'Where each stable tag points now, and the run that validated it'
    query: loadTextContent('../queries/workbook-stable-digests.kql')
    visualization: 'table'
  }
  {
    name: 'recent-rejections'
    title: 'Recent rejections and failures, with reasons and the record to open'
    query: loadTextContent('../queries/workbook-recent-rejections.kql')
    visualization: 'table'
  }
  {
    name: 'rollbacks'
    title: 'Rollbacks and demotions: who and why'
    query: loadTextContent('../queries/workbook-rollbacks.kql')
    visualization: 'table'
  }
  {
    name: 'push-to-promotion'
    title: 'Time from upstream push (first seen) to promotion'
    query: loadTextContent('../queries/workbook-push-to-promotion.kql')
    visualization: 'table'
  }
]

var workbookContent = {
  version: 'Notebook/1.0'
  items: concat(
    [
      {
        type: 1
        name: 'about'
        content: {
          json: '## Gated import: audit\nEvery tile reads the gate\'s `GATE_DECISION` log lines (one per decision). The ledger (`gate history`, `GET /api/gates`) stays the full record; this workspace keeps ${retentionInDays} days.'
        }
      }
      {
        type: 9
        name: 'parameters'
        content: {
          version: 'KqlParameterItem/1.0'
          parameters: workbookParameters
          style: 'pills'
          queryType: 0
          resourceType: 'microsoft.insights/components'
        }
      }
    ],
    map(workbookTiles, tile => {
      type: 3
      name: tile.name
      content: {
        version: 'KqlItem/1.0'
        query: tile.query
        size: 0
        title: tile.title
        timeContextFromParameter: 'TimeRange'
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: tile.visualization
      }
    })
  )
  fallbackResourceIds: [
    insights.id
  ]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // a workbook's name is a GUID
  name: guid(resourceGroup().id, applicationInsightsName, 'gate-audit-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Gated import: audit'
    category: 'workbook'
    sourceId: insights.id
    version: 'Notebook/1.0'
    serializedData: string(workbookContent)
  }
}

// -- alert rules --------------------------------------------------------------------------------
// Log search alerts (learn.microsoft.com/azure/templates/microsoft.insights/scheduledqueryrules):
// the query runs every evaluationFrequency over the last windowSize; Count counts its rows per
// dimension value and the alert fires when that is above the threshold. Each rule's scope is
// where its table is: the gate's lines (traces) in Application Insights, the vault's audit log
// (AZKVAuditLogs, from its diagnostic setting) in the workspace. An alert query has no parameters,
// so what a query needs from the deployment is a `let` the rule puts before it (prelude).

// the two identities that may read secrets; Key Vault logs a caller by its object id
var gateCallers = 'let gateCallers = dynamic(["${gatePrincipalId}", "${runnerPrincipalId}"]);\n'

var actionGroups = empty(actionGroupId) ? [] : [
  actionGroupId
]

var logAlerts = [
  {
    name: 'gate-rejected-or-failed'
    scope: insights.id
    prelude: ''
    displayName: 'Gate: a watched rule rejected or failed'
    description: 'A GATE_DECISION with verdict rejected, failed, failing or broken (one alert per rule).'
    severity: 2
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../queries/alert-rejected-or-failed.kql')
    dimensions: [
      'rule'
    ]
  }
  {
    name: 'gate-poisoned-request'
    scope: insights.id
    prelude: ''
    displayName: 'Gate: a request was poisoned'
    description: 'A trigger or the worker dropped a message it could not read, or the gate recorded a request it gave up on (reason poisoned: ...).'
    severity: 2
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../queries/alert-poisoned.kql')
    dimensions: []
  }
  {
    name: 'gate-poll-unreachable'
    scope: insights.id
    prelude: ''
    displayName: 'Gate: a watched registry was not reached for an hour'
    description: 'Every poll pass of the last hour (at least two) had errors or skipped tags for this registry (GATE_POLL lines).'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    query: loadTextContent('../queries/alert-poll-unreachable.kql')
    dimensions: [
      'registry'
    ]
  }
  {
    name: 'gate-foreign-secret-read'
    scope: workspace.id
    prelude: gateCallers
    displayName: 'Gate: a Key Vault secret was read by someone else'
    description: 'A secret of the gate\'s vault was read by an identity other than the gate\'s and the runner\'s, or a read was refused (a validation run trying a secret the runner may not read).'
    severity: 1
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../queries/alert-foreign-secret-read.kql')
    dimensions: [
      'caller'
    ]
  }
]

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in logAlerts: {
  name: '${alert.name}-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: alert.displayName
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [
      alert.scope
    ]
    evaluationFrequency: alert.frequency
    windowSize: alert.window
    criteria: {
      allOf: [
        {
          query: '${alert.prelude}${alert.query}'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: map(alert.dimensions, column => {
            name: column
            operator: 'Include'
            values: [
              '*'
            ]
          })
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // each fired alert stands until someone resolves it: a rejection does not "recover"
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}]

// A dead-lettered Event Grid delivery: the system topic's DeadLetteredCount metric (Total; per
// event subscription), learn.microsoft.com/azure/event-grid/monitor-push-reference. Metric alert
// rules live in the global location (learn.microsoft.com/azure/azure-monitor/alerts/
// resource-manager-alerts-metric) and may watch a resource of another resource group.
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = if (!empty(deadLetterTopicId)) {
  name: 'gate-dead-lettered-${applicationInsightsName}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Event Grid dead-lettered an upstream push meant for the gate (the event is in the dead-letter container).'
    severity: 2
    enabled: true
    scopes: [
      deadLetterTopicId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricNamespace: 'Microsoft.EventGrid/systemTopics'
          metricName: 'DeadLetteredCount'
          timeAggregation: 'Total'
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: false
    actions: empty(actionGroupId) ? [] : [
      {
        actionGroupId: actionGroupId
      }
    ]
  }
}

output workbookId string = workbook.id
output alertRuleNames array = [for (alert, i) in logAlerts: alerts[i].name]
