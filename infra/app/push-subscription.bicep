// The subscription that delivers upstream pushes to the on_push function.
//
// Event Grid checks that the destination function exists when the subscription is created, so
// this is deployed only once the code is (main.bicep's subscribeToEvents, set by the postdeploy
// hook in azure.yaml). Delivery is to the function resource itself (endpointType AzureFunction):
// Event Grid authenticates with the platform, no function key appears anywhere.

@description('Name of the upstream registry\'s system topic (in this resource group).')
param topicName string

@description('Resource id of the Function app.')
param functionAppId string

@description('Name of the Event Grid triggered function in function_app.py.')
param functionName string

// one StringIn filter: Event Grid takes at most 25 filter values per subscription
// (learn.microsoft.com/azure/event-grid/event-filtering, "Limitations")
@minLength(1)
@maxLength(25)
@description('Repositories of the upstream registry whose pushes reach the gate (data.target.repository): 1 to 25, Event Grid\'s limit of advanced filter values per subscription.')
param repositories array

@description('Resource id of the storage account holding the dead-letter container.')
param deadLetterStorageId string

param deadLetterContainerName string

@description('Delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

resource pushes 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  // event subscription names take letters, digits and dashes only
  name: 'gate-${replace(functionName, '_', '-')}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/${functionName}'
        // the trigger queues one request per event and answers at once; small batches keep a
        // failure (and its redelivery) to few events
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.ContainerRegistry.ImagePushed'
      ]
      // only watched repositories; on_push still checks the rules (tags, registry) itself
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.target.repository'
          values: repositories
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    // what still fails is kept, not dropped: the topic's own identity writes it to blob storage
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = pushes.name
